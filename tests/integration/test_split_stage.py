"""The split stage as DVC runs it: params.yaml, the manifest and features in; split.csv and the
report out, nothing left from a failed run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import load_stage
from tests.helpers.data import layout1_paths, split_inputs, splits_per_group

STAGE = load_stage("split")


def _write_stage_inputs(root: Path, paths: list[str], given: list[str] | None = None) -> None:
    frame = split_inputs(paths, given)
    manifest = frame.drop(columns="processed_sha256").assign(width=64, height=64, notes="")
    features = frame.assign(brightness=0.5, corrected=0)
    (root / "processed").mkdir()
    (root / "reports" / "data").mkdir(parents=True)
    (root / "data").mkdir()
    manifest.to_csv(root / "processed" / "manifest.csv", index=False)
    features.to_csv(root / "reports" / "data" / "features.csv", index=False)
    (root / "params.yaml").write_text(
        "seed: 42\nsplit:\n  val: 0.15\n  test: 0.15\n  group_pattern: '^(P\\d+)_'\n"
        "  groups_file: groups.csv\n"
    )


def test_stage_writes_split_and_report(tmp_path, monkeypatch, capsys):
    _write_stage_inputs(tmp_path, layout1_paths({"Er": 30, "Pr": 30, "Histology": 30}, 10))
    monkeypatch.chdir(tmp_path)
    STAGE.main([])
    table = pd.read_csv(tmp_path / "processed" / "split.csv", keep_default_na=False)
    report = json.loads((tmp_path / "reports" / "data" / "split.json").read_text())
    assert len(table) == 90 and set(table["split"]) == {"train", "val", "test"}
    assert (splits_per_group(table["group"], table["split"]) == 1).all()
    assert report["groups"]["pattern"] == r"^(P\d+)_" and report["seed"] == 42
    assert report["totals"] == table["split"].value_counts().to_dict()
    printed = capsys.readouterr().out
    assert "Histology" in printed and "train" in printed


def test_stage_uses_groups_file(tmp_path, monkeypatch):
    paths = [f"{c}/img{i:02d}.png" for c in ("a", "b") for i in range(20)]
    _write_stage_inputs(tmp_path, paths)
    rows = [f"{p},patient{i % 4}" for i, p in enumerate(paths)]
    (tmp_path / "data" / "groups.csv").write_text("path,group\n" + "\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    STAGE.main([])
    table = pd.read_csv(tmp_path / "processed" / "split.csv")
    report = json.loads((tmp_path / "reports" / "data" / "split.json").read_text())
    assert report["groups"]["source"] == "file" and report["groups"]["n_groups"] == 4
    assert (splits_per_group(table["group"], table["split"]) == 1).all()


def test_stage_fails_cleanly_on_leakage(tmp_path, monkeypatch):
    paths = [f"train/a/{i}.png" for i in range(6)] + [f"test/a/{i}.png" for i in range(2)]
    _write_stage_inputs(tmp_path, paths, [p.split("/")[0] for p in paths])
    features = tmp_path / "reports" / "data" / "features.csv"
    table = pd.read_csv(features)
    table.loc[table["path"].isin(["train/a/0.png", "test/a/1.png"]), "processed_sha256"] = "d" * 64
    table.to_csv(features, index=False)
    (tmp_path / "processed" / "split.csv").write_text("stale\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        STAGE.main([])
    message = str(exc.value.code)
    assert message.startswith("split: leakage")
    assert "train/a/0.png" in message and "test/a/1.png" in message
    assert not (tmp_path / "processed" / "split.csv").exists()


def test_stage_rejects_stale_features(tmp_path, monkeypatch):
    _write_stage_inputs(tmp_path, ["a/1.png", "a/2.png", "b/3.png"])
    features = tmp_path / "reports" / "data" / "features.csv"
    table = pd.read_csv(features)
    table.iloc[:2].to_csv(features, index=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"features.csv: lacks 1 image\(s\).*b/3.png"):
        STAGE.main([])


def test_stage_names_a_missing_or_unreadable_input(tmp_path, monkeypatch):
    _write_stage_inputs(tmp_path, ["a/1.png", "a/2.png", "b/3.png"])
    features = tmp_path / "reports" / "data" / "features.csv"
    monkeypatch.chdir(tmp_path)
    pd.read_csv(features).drop(columns=["processed_sha256"]).to_csv(features, index=False)
    with pytest.raises(SystemExit, match=r"features.csv: missing column\(s\) \['processed_sha"):
        STAGE.main([])
    features.write_bytes(b"")
    with pytest.raises(SystemExit, match=r"features.csv: cannot read as CSV"):
        STAGE.main([])
    features.unlink()
    with pytest.raises(SystemExit, match=r"features.csv: not found \(run the validate and"):
        STAGE.main([])
