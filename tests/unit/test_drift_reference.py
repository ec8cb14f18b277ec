"""The reference table (train split, embeddings file) and image folders as current data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ihcflow.data.synth import render_image
from ihcflow.images.codec import encode_png
from ihcflow.images.features import FEATURE_COLUMNS
from ihcflow.images.prepare import ImageParams
from ihcflow.monitoring.sources import (
    DriftInputError,
    Model,
    load_reference,
    read_image_folder,
)
from tests.helpers import conf_section


def write_tables(root: Path, n: int = 12) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    paths = [f"{'AB'[i % 2]}/img{i}.png" for i in range(n)]
    features = pd.DataFrame(rng.random((n, len(FEATURE_COLUMNS))), columns=FEATURE_COLUMNS)
    features.insert(0, "path", paths)
    features.insert(1, "class", [p[0] for p in paths])
    features.insert(2, "sha256", [f"h{i}" for i in range(n)])
    split = pd.DataFrame(
        {
            "path": paths,
            "sha256": [f"h{i}" for i in range(n)],
            "class": [p[0] for p in paths],
            "split": ["train" if i % 3 else "test" for i in range(n)],
            "group": "",
            "image": [f"processed/images/h{i}.png" for i in range(n)],
        }
    )
    features.to_csv(root / "features.csv", index=False)
    split.to_csv(root / "split.csv", index=False)
    return root / "features.csv", root / "split.csv"


def test_the_reference_is_the_train_split(tmp_path: Path) -> None:
    features, split = write_tables(tmp_path)
    table = load_reference(features, split_csv=split)
    assert len(table) == 8 and table.source == f"{features} (train split of {split})"
    assert table.frame["predicted"].tolist() == ["B", "A", "A", "B", "B", "A", "A", "B"]
    assert table.notes == [
        "reference class distribution: the training labels (no model predictions)"
    ]
    assert len(load_reference(features)) == 12  # no split table: every row


def test_split_and_features_from_different_runs_are_refused(tmp_path: Path) -> None:
    features, split = write_tables(tmp_path)
    pd.read_csv(features).iloc[:-2].to_csv(features, index=False)
    with pytest.raises(DriftInputError, match=r"2 train image\(s\) not in .*different pipeline"):
        load_reference(features, split_csv=split)
    with pytest.raises(DriftInputError, match="no rows with split='val'"):
        load_reference(features, split_csv=split, split="val")


def test_a_non_numeric_reference_feature_names_the_rows(tmp_path: Path) -> None:
    features, _ = write_tables(tmp_path)
    table = pd.read_csv(features)
    table["sharpness"] = table["sharpness"].astype(object)
    table.loc[3, "sharpness"] = "n/a"
    table.to_csv(features, index=False)
    with pytest.raises(DriftInputError, match=r"1 row\(s\) with missing or non-numeric.*img3"):
        load_reference(features)


def test_reference_embeddings_from_a_file_match_by_sha256(tmp_path: Path) -> None:
    features, split = write_tables(tmp_path)
    keys = np.array([f"h{i}" for i in range(12)][::-1])  # any order
    emb = np.arange(24, dtype=np.float32).reshape(12, 2)[::-1]
    np.savez(tmp_path / "emb.npz", sha256=keys, embedding=emb)
    table = load_reference(features, split_csv=split, embeddings_file=tmp_path / "emb.npz")
    assert table.embeddings is not None
    assert table.embeddings[:, 0].tolist() == [2.0, 4.0, 8.0, 10.0, 14.0, 16.0, 20.0, 22.0]
    np.savez(tmp_path / "short.npz", sha256=keys[:5], embedding=emb[:5])
    with pytest.raises(DriftInputError, match=r"no embedding for 7 reference image\(s\)"):
        load_reference(features, embeddings_file=tmp_path / "short.npz")


def test_an_image_folder_counts_what_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    for i in range(3):
        (tmp_path / "a" / f"x{i}.png").write_bytes(encode_png(render_image("Er", i, size=64)))
    (tmp_path / "a" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"ignored")
    (tmp_path / "readme.txt").write_text("batch 42")
    params = ImageParams.from_section(conf_section("preprocess"))
    table = read_image_folder(tmp_path, image_params=params)
    assert table.frame["path"].tolist() == ["a/x0.png", "a/x1.png", "a/x2.png"]
    assert table.counts == {"files": 4, "unreadable_images": 1, "other_files": 1, "rows": 3}
    assert table.problems[0].startswith(f"{tmp_path / 'a' / 'cut.jpg'}: ")
    assert table.embeddings is None and "predicted" not in table.frame
    assert table.frame["width"].tolist() == [64.0] * 3 and set(table.frame["format"]) == {"PNG"}
    assert f"features measured at {params.size} px (area)" in table.notes
    (tmp_path / "empty").mkdir()
    with pytest.raises(DriftInputError, match=r"empty: no images \(.*\) and no prediction logs"):
        read_image_folder(tmp_path / "empty", image_params=params)
    with pytest.raises(DriftInputError, match="measured at the reference's analysis size"):
        read_image_folder(tmp_path)  # no model, no preprocess params: no analysis size


def test_a_model_without_full_preprocess_params_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(encode_png(render_image("Er", 0, size=64)))
    model = Model(tmp_path / "model.onnx", "m", "1.0.0", ["A"], 64, {"size": 64}, "0" * 64)
    with pytest.raises(DriftInputError, match="model.json: new images cannot be prepared"):
        read_image_folder(tmp_path, model=model)
