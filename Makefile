# Two commands for a fresh machine:  make demo  (the study on the built-in scenes)  and  make test.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= runs/demo

.PHONY: setup demo test test-all bench browser clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch lies on local disk; install it first so nothing pulls a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# headless chromium for the browser tests (Debian package; skipped when not root / no apt)
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: browser tests will be skipped"; }

demo: $(STAMP)
	$(BIN)/attnlens study --preset demo --out $(OUT)

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# everything, including the slow Ray tests (installs the optional `ray` extra)
test-all: $(STAMP) browser
	$(BIN)/pip install -q -e '.[dev,ray]'
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
