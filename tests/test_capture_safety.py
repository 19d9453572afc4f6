"""Safety of attnlens.capture itself: threads, shared spill folders, unwritable folders, option types."""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import torch
from torch import nn

import attnlens
from attnlens.attention_map import AttentionMap
from attnlens.capture import MapStore, dispatch
from attnlens.capture.adapters import hook_returned_weights
from attnlens.capture.sites import Tap
from attnlens.errors import CaptureError, DTypeError, ShapeError
from attnlens.models.attention import CrossAttention, ProbeRecord
from test_capture import TwoWay, hooks_left, inputs
from test_capture_primitives import Net, encoder

pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")


class Returns(nn.Module):
    """Returns its weights only when asked (``output_attentions``), like transformers' modules.

    ``gate``: when set, a call from the thread ``waiter`` waits on it inside ``forward`` (after
    the capture's pre-hook ran, before its post-hook), so another thread's call runs meanwhile.
    """

    def __init__(self):
        super().__init__()
        self.gate: threading.Event | None = None
        self.waiter: int | None = None

    def forward(self, x, output_attentions=False):
        if self.gate is not None and threading.get_ident() == self.waiter:
            assert self.gate.wait(10)
        w = torch.softmax(x @ x.transpose(-1, -2), -1)
        return (w @ x, w) if output_attentions else (w @ x,)


class ReturnsTap(Tap):
    def __init__(self, module):
        super().__init__(["r"], module)

    def attach(self, emit, wanted):
        return hook_returned_weights(self.module, lambda a, k, w: emit("r", ProbeRecord(w, None, ("query", "key"))))


def run_in_thread(fn):
    box = {}

    def target():
        try:
            box["out"] = fn()
        except BaseException as exc:  # pragma: no cover - reported below
            box["err"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join(20)
    assert not t.is_alive()
    if "err" in box:
        raise box["err"]
    return box["out"]


# --------------------------------------------------------------------------- threads
def test_other_thread_is_neither_recorded_nor_changed_mid_call():
    """The capturing thread is paused inside forward (its flag forced) while another thread runs."""
    m = Returns()
    x = torch.randn(3, 4)
    m.gate, m.waiter = threading.Event(), threading.get_ident()
    other = {}

    def second():
        other["out"] = m(x)
        m.gate.set()

    t = threading.Thread(target=second)
    with attnlens.capture(m, ReturnsTap(m)) as rec:
        t.start()  # runs while the main thread's call below waits at the gate
        mine = m(x)
    t.join(10)
    assert len(other["out"]) == 1 and len(mine) == 1  # nobody got weights they did not ask for
    assert len(rec) == 1
    with attnlens.capture(m, ReturnsTap(m)) as rec:
        m.gate = None
        both = m(x, output_attentions=True)
        alone = run_in_thread(lambda: m(x))
    assert len(both) == 2 and len(alone) == 1 and len(rec) == 1
    assert not hooks_left(m)


@pytest.mark.parametrize("kind", ["probe", "mha", "encoder_fast", "sdpa"])
def test_second_thread_during_capture_is_not_recorded_and_correct(kind):
    torch.manual_seed(0)
    if kind == "probe":
        model, x = TwoWay(), inputs()
        run = lambda: model(*x)  # noqa: E731
    elif kind == "mha":
        model, x = nn.MultiheadAttention(8, 2), torch.randn(3, 2, 8)
        run = lambda: model(x, x, x, need_weights=False)  # noqa: E731
    elif kind == "encoder_fast":
        model, x = encoder(), torch.randn(2, 4, 8)
        pad = torch.tensor([[False] * 4, [False, False, True, True]])

        def run():  # no_grad is per thread: each thread takes the fast path
            with torch.no_grad():
                return model(x, src_key_padding_mask=pad)
    else:
        model, x = Net(), torch.randn(2, 4, 8)
        run = lambda: model(x)  # noqa: E731
    with torch.no_grad():
        expected = run()
        with attnlens.capture(model) as rec:
            theirs = [run_in_thread(run) for _ in range(3)]
            mine = run()
        n_mine = len(rec)
        with attnlens.capture(model) as ref:
            run()
    assert n_mine == len(ref) > 0  # only the capturing thread's one call
    flat = lambda o: [t for t in (o if isinstance(o, (tuple, list)) else [o])  # noqa: E731
                      for t in (t if isinstance(t, (tuple, list)) else [t]) if isinstance(t, torch.Tensor)]
    for out in theirs + [mine]:
        for a, b in zip(flat(out), flat(expected)):
            assert torch.equal(a.nan_to_num(), b.nan_to_num())
    assert all(m.meta["forward_index"] == 0 for m in rec.maps)
    assert not hooks_left(model) and not dispatch.installed()


def test_nested_captures_of_one_model():
    torch.manual_seed(1)
    for model, run in ((TwoWay(), None), (encoder(), torch.randn(1, 3, 8)), (Net(), torch.randn(1, 3, 8))):
        call = (lambda: model(*inputs())) if run is None else (lambda: model(run))
        with attnlens.capture(model) as outer:
            call()
            with attnlens.capture(model) as inner:
                call()
            with attnlens.capture(model, grad=True) as inner_grad:
                call()
        assert len(outer) == 3 * len(inner) > 0 and len(inner_grad) == len(inner)
        for a, b in zip(outer.maps[len(inner):], inner.maps):
            torch.testing.assert_close(a.weights, b.weights, atol=1e-6, rtol=0)
        assert not hooks_left(model) and not dispatch.installed()


# --------------------------------------------------------------------------- spill folders
def _maps(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [AttentionMap(torch.rand(3, 4, generator=g), ("word", "region"), meta={"i": i}) for i in range(n)]


def test_two_stores_share_a_spill_dir_without_touching_each_other(tmp_path):
    a, b = MapStore(0, tmp_path), MapStore(0, tmp_path)
    ma, mb = _maps(4, 0), _maps(4, 1)
    for x, y in zip(ma, mb):  # interleaved spills: same shard numbers in both stores
        a.append(x)
        b.append(y)
    assert a.spill_dir != b.spill_dir and a.spill_dir.parent == b.spill_dir.parent == tmp_path
    assert {p.name for p in a.shards} == {p.name for p in b.shards}
    a.close()
    assert all(torch.equal(b[i].weights, mb[i].weights) for i in range(4))
    assert not a.spill_dir.exists() and tmp_path.exists()
    b.close()
    assert list(tmp_path.iterdir()) == []


def test_two_captures_share_a_spill_dir(tmp_path):
    model, x = TwoWay(), inputs()
    with attnlens.capture(model, memory_budget=0, spill_dir=tmp_path) as r1:
        model(*x)
        with attnlens.capture(model, memory_budget=0, spill_dir=tmp_path) as r2:
            model(*x)
    assert r1.store.spill_dir != r2.store.spill_dir
    want = [m.weights for m in r2.maps]
    r1.close()
    assert [torch.equal(m.weights, w) for m, w in zip(r2.maps, want)] == [True] * len(want)


def test_unwritable_spill_dir_is_a_capture_error_naming_it(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for bad in (blocker, blocker / "sub"):
        with pytest.raises(CaptureError, match=str(bad).replace("/", ".")):
            attnlens.capture(TwoWay(), memory_budget=0, spill_dir=bad)
        with pytest.raises(CaptureError, match="spill folder"):
            MapStore(10, bad)


def test_failed_spill_keeps_the_maps_in_memory(tmp_path):
    store = MapStore(None, tmp_path)
    maps = _maps(3)
    for m in maps:
        store.append(m)
    shutil.rmtree(store.spill_dir)  # the folder vanished (or cannot be written) after the store was made
    with pytest.raises(CaptureError, match="cannot write spill shard"):
        store.spill()
    assert store.spilled_count == 0 and all(torch.equal(store[i].weights, maps[i].weights) for i in range(3))


# --------------------------------------------------------------------------- option types
BAD = [("queries", "0", DTypeError), ("queries", "01", DTypeError), ("heads", 1.0, DTypeError),
       ("layers", True, DTypeError), ("heads", [0, True], DTypeError), ("layers", [0.0], DTypeError),
       ("queries", [[0, 1]], ShapeError), ("heads", torch.tensor([[0]]), ShapeError),
       ("queries", torch.tensor([0.0]), DTypeError), ("layers", np.array([True]), DTypeError),
       ("heads", [], ShapeError), ("layers", object(), DTypeError), ("queries", ["a"], DTypeError)]


@pytest.mark.parametrize("name, value, error", BAD, ids=[f"{n}={v!r}"[:30] for n, v, _ in BAD])
def test_index_options_of_the_wrong_type_name_the_argument(name, value, error):
    with pytest.raises(error, match=f"{name}="):
        attnlens.capture(TwoWay(), **{name: value})
    assert issubclass(error, (TypeError, ValueError))


@pytest.mark.parametrize("value", [1, [1], (1,), range(1, 2), np.array([1]), torch.tensor([1]), np.int64(1)])
def test_index_options_accept_ints_and_flat_sequences(value):
    attn = CrossAttention("dot", 4)
    with attnlens.capture(attn, queries=value) as rec:
        attn(torch.randn(1, 3, 4), torch.randn(1, 2, 4))
    assert rec.maps[0].shape["query"] == 1 and rec.maps[0].meta["queries"] == [1]
    model = TwoWay()
    with attnlens.capture(model, layers=value) as rec:
        model(*inputs())
    assert {m.layer for m in rec.maps} == {1}


def test_other_thread_runs_while_the_capturing_thread_is_inside_a_watched_module():
    """The main thread waits inside an SDPA site (its TorchFunctionMode pushed) while another
    thread runs the whole model: the other thread's SDPA calls are neither seen nor changed."""
    torch.manual_seed(2)
    net, x = Net(), torch.randn(2, 4, 8)
    with torch.no_grad():
        expected = net(x)
    gate, main = threading.Event(), threading.get_ident()

    def wait(module, args, output):
        if threading.get_ident() == main:
            assert gate.wait(10)

    handle = net.blocks[0].attn.out.register_forward_hook(wait)
    other = {}

    def second():
        with torch.no_grad():
            other["out"] = net(x)
            other["modes"] = torch._C._len_torch_function_stack()
        gate.set()

    t = threading.Thread(target=second)
    try:
        with torch.no_grad(), attnlens.capture(net) as rec:
            t.start()
            mine = net(x)
        t.join(10)
    finally:
        handle.remove()
    assert len(rec) == 2 and other["modes"] == 0
    assert torch.equal(other["out"], expected) and torch.equal(mine, expected)
