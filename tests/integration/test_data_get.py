"""`ihcflow data get` and `ihcflow data import` under the real DVC, mostly in fresh clones.

What a user relies on: the built-in sample comes back byte for byte; data that cannot be
restored (imported data without a remote, a sample that no longer regenerates to the recorded
hash) stops `data get` with a message saying how to get it, and data.dvc is never rewritten.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ihcflow.data.provenance import IMPORT_SOURCE, LABEL_SOURCE, SAMPLE_SOURCE
from ihcflow.files import sha256_bytes
from ihcflow.images.codec import encode_png, read_rgb8
from ihcflow.labelling.tasks import data_url
from ihcflow.reporting.pr import data_source
from tests.helpers import fresh_clone, run_cmd
from tests.helpers.labelling import annotation
from tests.helpers.pipeline import DVC, IHCFLOW, set_param


def project_with_the_sample_from_get(project) -> Path:
    """A fresh project whose data/ is the built-in sample made by `ihcflow data get`, committed
    (a small sample keeps this fast; data.dvc records how it was made)."""
    root = project()
    set_param(root, "data.synth.per_class", 4)
    set_param(root, "data.synth.size", 64)
    assert "built-in sample written" in run_cmd([IHCFLOW, "data", "get"], root).stdout
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-qm", "data: the built-in sample"], root)
    return root


def get_fails(root: Path) -> str:
    """`ihcflow data get` in ``root`` must fail, write no data/ and leave data.dvc as it was."""
    before = (root / "data.dvc").read_bytes()
    proc = run_cmd([IHCFLOW, "data", "get"], root, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (root / "data.dvc").read_bytes() == before
    assert not (root / "data").exists()
    assert not list(root.glob(".data*")), "a staging folder was left behind"
    assert run_cmd(["git", "status", "--porcelain"], root).stdout == ""
    return proc.stderr


def test_data_get_writes_the_sample_then_restores_it_from_the_cache_and_keeps_edits(
    project,
) -> None:
    root = project_with_the_sample_from_get(project)
    recorded = yaml.safe_load((root / "data.dvc").read_text())
    assert recorded["meta"]["source"] == SAMPLE_SOURCE
    assert recorded["meta"]["md5"] == recorded["outs"][0]["md5"]
    assert recorded["meta"]["args"]["per_class"] == 4

    run_cmd(["rm", "-rf", "data"], root)
    assert "local DVC cache" in run_cmd([IHCFLOW, "data", "get"], root).stdout

    # a user's own edits are never overwritten
    (root / "data/Er/extra.png").write_bytes(next((root / "data/Pr").iterdir()).read_bytes())
    assert "differs from data.dvc" in run_cmd([IHCFLOW, "data", "get"], root).stdout
    assert (root / "data/Er/extra.png").exists()


def test_fresh_clone_regenerates_the_recorded_sample_byte_for_byte(project, tmp_path) -> None:
    clone = fresh_clone(project_with_the_sample_from_get(project), tmp_path / "clone")
    before = (clone / "data.dvc").read_bytes()
    out = run_cmd([IHCFLOW, "data", "get"], clone).stdout
    assert "built-in sample regenerated" in out and "matches data.dvc" in out
    assert (clone / "data.dvc").read_bytes() == before
    # in the DVC cache too: nothing left to commit
    assert run_cmd([DVC, "status", "data.dvc"], clone).stdout.strip().endswith("up to date.")
    assert "Data: the built-in synthetic sample" in f"Data: {data_source(clone)}"


def test_fresh_clone_refuses_a_sample_that_regenerates_to_another_hash(project, tmp_path) -> None:
    root = project_with_the_sample_from_get(project)
    recorded = yaml.safe_load((root / "data.dvc").read_text())
    recorded["meta"]["args"]["seed"] = 1  # same data.dvc hash, other generator args
    (root / "data.dvc").write_text(yaml.safe_dump(recorded, sort_keys=False))
    run_cmd(["git", "commit", "-qam", "data.dvc: other seed"], root)

    message = get_fails(fresh_clone(root, tmp_path / "clone"))
    assert f"records the built-in sample with hash {recorded['outs'][0]['md5']}" in message
    assert "seed=1" in message and "no DVC remote is configured" in message
    assert "`dvc pull`" in message and "data.dvc is left as it is" in message


def _npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        train_images=rng.integers(0, 256, (12, 28, 28, 3), dtype=np.uint8),
        train_labels=np.arange(12) % 3,
        test_images=rng.integers(0, 256, (6, 28, 28, 3), dtype=np.uint8),
        test_labels=np.arange(6) % 3,
    )
    return path


@pytest.mark.slow
def test_import_records_its_source_and_a_fresh_clone_never_gets_the_sample_instead(
    project, tmp_path
) -> None:
    root = project_with_the_sample_from_get(project)
    npz = _npz(tmp_path / "tiny.npz")
    out = run_cmd([IHCFLOW, "data", "import", str(npz), "--replace"], root).stdout
    assert "data.dvc records the import" in out
    recorded = yaml.safe_load((root / "data.dvc").read_text())
    meta = recorded["meta"]
    assert meta["source"] == IMPORT_SOURCE and "args" not in meta  # the sample's meta is gone
    assert meta["md5"] == recorded["outs"][0]["md5"]
    assert meta["imported"]["name"] == "tiny.npz" and meta["imported"]["kind"] == "npz"
    assert meta["imported"]["images"] == 18
    assert meta["imported"]["counts"]["test"] == {"class_0": 2, "class_1": 2, "class_2": 2}
    # the README's older habit, `dvc add data` after the import, keeps the meta
    run_cmd([DVC, "add", "-q", "data"], root)
    assert yaml.safe_load((root / "data.dvc").read_text())["meta"] == meta
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-qm", "data: tiny.npz"], root)

    clone = fresh_clone(root, tmp_path / "clone")
    message = get_fails(clone)
    assert "records data imported from `tiny.npz` (npz, 18 images)" in message
    assert "`dvc pull`" in message and "ihcflow data import SRC" in message
    assert data_source(clone).startswith("data imported from `tiny.npz`")

    # data changed after the import and added again: the meta no longer describes it
    (root / "data/train/class_0/train_00000.png").unlink()
    run_cmd([DVC, "add", "-q", "data"], root)
    assert data_source(root).startswith("data changed since it was data imported from `tiny.npz`")


def test_label_pull_records_itself_and_a_fresh_clone_never_gets_the_sample_instead(
    project, tmp_path
) -> None:
    root = project_with_the_sample_from_get(project)
    sample_meta = yaml.safe_load((root / "data.dvc").read_text())["meta"]
    first = sorted((root / "data").glob("*/*.png"))[0]
    cls = first.parent.name
    tasks = []
    for i, flip in enumerate((0, 1)):  # two new images of a known class, labelled in the export
        image = encode_png(np.flip(read_rgb8(first)[0], axis=flip).copy())
        data = {"image": data_url(image, "image/png"), "sha256": sha256_bytes(image)}
        tasks.append({"id": i + 1, "data": data, "annotations": [annotation(1, cls)]})
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    out = run_cmd([IHCFLOW, "label", "pull", "--export", str(export)], root).stdout
    assert f"added to data/ (layout 1): {cls} 2" in out

    recorded = yaml.safe_load((root / "data.dvc").read_text())
    meta = recorded["meta"]
    assert meta["source"] == LABEL_SOURCE and meta["md5"] == recorded["outs"][0]["md5"]
    assert meta["base"] == sample_meta  # what data/ was before the labels
    assert meta["labelled"]["images"] == 2 and meta["labelled"]["counts"] == {cls: 2}
    assert meta["labelled"]["table"] == "data/labelled.csv"
    assert data_source(root).startswith(
        "the built-in synthetic sample plus 2 image(s) labelled in Label Studio"
    )
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-qm", "data: 2 labelled"], root)

    clone = fresh_clone(root, tmp_path / "clone")
    message = get_fails(clone)  # not regenerated as the sample, data.dvc untouched
    assert "records the built-in synthetic sample plus 2 image(s) labelled" in message
    assert "`dvc pull`" in message


def test_data_get_refuses_data_of_unrecorded_origin(project) -> None:
    root = project()
    run_cmd([IHCFLOW, "data", "synth", "--per-class", "3", "--size", "32"], root)
    run_cmd([DVC, "add", "-q", "data"], root)  # the user's data: no meta
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-qm", "data"], root)
    run_cmd(["rm", "-rf", "data", ".dvc/cache"], root)
    assert "records data of unrecorded origin" in get_fails(root)


def test_import_outside_a_dvc_project_copies_without_versioning(tmp_path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    out = run_cmd([IHCFLOW, "data", "import", str(_npz(tmp_path / "t.npz"))], plain).stdout
    assert "not in a DVC project" in out
    assert (plain / "data/test/class_0").is_dir() and not (plain / "data.dvc").exists()


def test_import_keeps_the_npz_class_names_and_says_so(tmp_path) -> None:
    npz = _npz(tmp_path / "blood.npz")
    arrays = dict(np.load(npz))
    np.savez(npz, **arrays, class_names=np.array(["basophil", "eosinophil", "ig"]))
    out = run_cmd([IHCFLOW, "data", "import", str(npz)], tmp_path).stdout
    assert "class names from the file's class_names: 0=basophil, 1=eosinophil, 2=ig" in out
    assert sorted(p.name for p in (tmp_path / "data/train").iterdir()) == [
        "basophil", "eosinophil", "ig",
    ]  # fmt: skip
