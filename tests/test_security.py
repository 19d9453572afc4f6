"""Issue #16: paths read from data and run files stay inside their folder; the public face imports."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

import attnlens
from attnlens.cli import main
from attnlens.data import load_coco, load_flickr30k_entities
from attnlens.errors import FormatError
from attnlens.io import UnsafePathError, confine
from attnlens.report import ReportFigure, ReportInput, write_report

SECRET = "TOP-SECRET-CONTENT"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def test_confine_helper(tmp_path):
    (tmp_path / "in").mkdir()
    assert confine("a/b.png", tmp_path / "in") == (tmp_path / "in" / "a" / "b.png").resolve()
    for bad in ("../x", "/etc/passwd", str(tmp_path / "in" / "a.png"), "a/../../x", "", "a\x00b"):
        with pytest.raises(UnsafePathError) as e:
            confine(bad, tmp_path / "in", source="run.json", what="figures[0].path")
        assert isinstance(e.value, FormatError) and "run.json" in str(e.value) and "figures[0].path" in str(e.value)
    with pytest.raises(UnsafePathError):
        confine(None, tmp_path)
    (tmp_path / "in" / "link").symlink_to(tmp_path)       # a link out of the root is refused too
    with pytest.raises(UnsafePathError):
        confine("link/secret.txt", tmp_path / "in")


def _flickr(root):
    (root / "Sentences").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "Sentences" / "1.txt").write_text("[/EN#5/animals A dog] runs .\n")
    (root / "Annotations" / "1.xml").write_text("<annotation><size><width>10</width><height>8</height></size>"
                                                "</annotation>")


@pytest.mark.parametrize("entry", ["../outside/secret", "{abs}", "../../../../../../{abs}"])
def test_flickr_split_ids_are_confined(tmp_path, entry):
    root = tmp_path / "f30k"
    _flickr(root)
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_text(f"[/EN#1/other {SECRET}] .\n")
    (out / "secret.xml").write_text("<annotation><size><width>10</width><height>8</height></size></annotation>")
    entry = entry.format(abs=str(out / "secret"))
    (root / "train.txt").write_text(f"1\n{entry}\n")
    with pytest.raises(UnsafePathError) as e:
        load_flickr30k_entities(root, split="train")
    msg = str(e.value)
    assert "train.txt:2" in msg and entry in msg
    # a split name that leaves the folder is refused as well
    (out / "evil.txt").write_text("1\n")
    with pytest.raises(UnsafePathError):
        load_flickr30k_entities(root, split="../outside/evil")
    (root / "ok.txt").write_text("\ufeff1\n")             # a BOM is not part of the id
    assert [c.image_id for c in load_flickr30k_entities(root, split="ok")] == ["1"]


@pytest.mark.parametrize("file_name", ["../secret.jpg", "{abs}", "sub/../../secret.jpg"])
def test_coco_file_name_is_confined(tmp_path, file_name):
    pytest.importorskip("pycocotools")
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"x")
    file_name = file_name.format(abs=str(tmp_path / "secret.jpg"))
    images = [{"id": 1, "file_name": file_name, "width": 10, "height": 10}]
    cp, ip = tmp_path / "captions.json", tmp_path / "instances.json"
    cp.write_text(json.dumps({"images": images, "annotations": [{"id": 1, "image_id": 1, "caption": "a dog"}]}))
    ip.write_text(json.dumps({"images": images, "categories": [{"id": 1, "name": "dog"}], "annotations": []}))
    with pytest.raises(UnsafePathError) as e:
        load_coco(cp, ip, images_dir=images_dir)
    assert "captions.json" in str(e.value) and "file_name" in str(e.value) and file_name in str(e.value)
    assert load_coco(cp, ip)[0].image_path is None          # without images_dir nothing is resolved


def _run_dir(tmp_path, figure_path):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "secret.png").write_bytes(PNG + SECRET.encode())
    pd.DataFrame({"task": ["matching"], "alignment": ["dot"], "metric": ["pointing_game"], "mean": [0.5],
                  "category": ["grounding"]}).to_csv(run / "metrics.csv", index=False)
    (run / "report_input.json").write_text(json.dumps(ReportInput(figures=[
        ReportFigure(figure_path, "f", "matching")]).to_json()))
    return run


@pytest.mark.parametrize("figure_path", ["../secret.png", "{abs}"])
def test_report_embeds_only_files_inside_the_run(tmp_path, capsys, figure_path):
    import base64

    figure_path = figure_path.format(abs=str(tmp_path / "secret.png"))
    run = _run_dir(tmp_path, figure_path)
    with pytest.raises(UnsafePathError) as e:
        write_report(run)
    assert "report_input.json" in str(e.value) and figure_path in str(e.value)
    assert main(["report", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "report_input.json" in err and "Traceback" not in err
    assert not (run / "report.html").exists()
    encoded = base64.b64encode(PNG + SECRET.encode()).decode()
    for f in run.iterdir():
        assert encoded not in f.read_text(errors="replace")


def test_report_still_embeds_figures_inside_the_run(tmp_path):
    run = _run_dir(tmp_path, "figures/f.png")
    (run / "figures").mkdir()
    (run / "figures" / "f.png").write_bytes(PNG)
    paths = write_report(run)
    assert "data:image/png;base64," in paths["html"].read_text()


def test_star_import_and_every_public_name():
    for name in attnlens.__all__:
        assert getattr(attnlens, name) is not None, name
    code = "from attnlens import *; import attnlens; names = dir(); assert all(n in names for n in attnlens.__all__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_capture_job_record_outputs_are_confined(tmp_path):
    from attnlens.distributed.shards import DONE, job_done

    out = tmp_path / "job"
    out.mkdir()
    (tmp_path / "secret.txt").write_text(SECRET)
    (out / "ok.txt").write_text("x")
    (out / DONE).write_text(json.dumps({"outputs": ["ok.txt"]}))
    assert job_done(out) is not None
    for bad in (["../secret.txt"], [str(tmp_path / "secret.txt")], [3], "ok.txt"):
        (out / DONE).write_text(json.dumps({"outputs": bad}))
        assert job_done(out) is None, bad      # an escaping entry never makes a job look finished
    (out / DONE).write_text("[1, 2]")
    assert job_done(out) is None
