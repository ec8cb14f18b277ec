"""`ihcflow drift` end to end: prediction logs over several days, a folder of new images, a
registered model's embeddings, exit codes, the report files (HTML rendered in Chromium)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from ihcflow import cli as ihcflow_cli
from ihcflow.images.codec import encode_png, read_rgb8
from ihcflow.images.features import FEATURE_COLUMNS, image_features
from ihcflow.monitoring.cli import main
from ihcflow.monitoring.simulate import log_record, scale_brightness, scale_stain
from ihcflow.monitoring.sources import load_model
from tests.helpers import PBC_SAMPLE, plain_preprocess, write_logs
from tests.helpers.data import (
    COLOURS,
    POOL_SIZE,
    SIZE,
    colour_image,
    pool,
    write_colour_dataset,
)
from tests.helpers.models import PASSING, TinyPredictor, evaluate_tiny, register_tiny, train_tiny

DAY0 = dt.datetime(2026, 5, 4, tzinfo=dt.UTC)
N_TRAIN = 200


PBC_SIZE = 64  # the analysis size of the real-image tests (conf/preprocess's input size)


def params_yaml(root: Path, size: int) -> None:
    """params.yaml with the preprocess section the reference was measured with: an image
    folder checked without a model is measured at its size."""
    yaml = OmegaConf.to_yaml(OmegaConf.create({"preprocess": plain_preprocess(size)}))
    (root / "params.yaml").write_text(yaml)


def features_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """reports/data/features.csv as the preprocess stage writes it (docs/pipeline.md)."""
    frame = pd.DataFrame(rows)
    frame["given_split"] = ""
    frame["processed_sha256"] = frame["sha256"]
    frame["corrected"] = frame["stain_normalized"] = 0
    columns = ["path", "class", "given_split", "sha256", "processed_sha256"]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame[columns + FEATURE_COLUMNS + ["corrected", "stain_normalized"]].to_csv(path, index=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training features of 250 synthetic IHC images (200 train) and 6 days of prediction logs:
    4 days like the training data, then 2 days from a 15% darker scanner; plus noise: 3 records
    of an old model version and a truncated line."""
    root = tmp_path_factory.mktemp("drift_project")
    images, classes, base = pool()
    order = np.random.default_rng(7).permutation(len(images))
    rows, split = [], []
    for k, i in enumerate(order[:250]):
        rel = f"{classes[i]}/img{i:04d}.png"
        rows.append({"path": rel, "class": classes[i], "sha256": f"{i:064d}", **base.iloc[i]})
        part = "train" if k < N_TRAIN else "test"
        split.append({"path": rel, "sha256": f"{i:064d}", "class": classes[i], "split": part})
    features_csv(root / "reports/data/features.csv", rows)
    params_yaml(root, POOL_SIZE)
    frame = pd.DataFrame(split).assign(group="", image=lambda f: "processed/images/" + f["sha256"])
    (root / "processed").mkdir()
    frame.to_csv(root / "processed/split.csv", index=False)
    records = []
    for k, i in enumerate(order[250:490]):
        day, minute = divmod(k, 40)
        rgb = scale_brightness(images[i], 0.85) if day >= 4 else images[i]
        moment = DAY0 + dt.timedelta(days=day, minutes=30 * minute + 7)
        records.append(log_record(moment, image_features(rgb, POOL_SIZE), classes[i]))
    for k in range(3):
        records.append(log_record(DAY0, base.iloc[k][FEATURE_COLUMNS], "Er", model_version="0.9.0"))
    log_dir = root / "logs/predictions"
    files = write_logs(log_dir, records)
    with files[-1].open("a") as fh:
        fh.write('{"ts": "2026-05-09T23:59:59.000Z", "request_id": "cut')
    return root


def drift(root: Path, *args: str) -> int:
    return main(
        [
            "--reference",
            str(root / "reports/data/features.csv"),
            "--root",
            str(root),
            "--params",
            str(root / "params.yaml"),
            "--out",
            str(root / "reports/drift"),
            *args,
        ]
    )


def summary(root: Path) -> dict[str, Any]:
    return json.loads((root / "reports/drift/drift.json").read_text())["summary"]


def assert_self_contained(page: str) -> None:
    lowered = page.lower()
    assert "<script src=" not in lowered and "<link" not in lowered
    assert 'src="http' not in lowered and "url(http" not in lowered
    assert "drawDashboard" in page and 'id="ihcflow-drift-summary"' in page


def test_logs_over_days_find_the_darker_scanner(project: Path) -> None:
    code = drift(
        project,
        "--current",
        str(project / "logs/predictions"),
        "--window",
        "day",
        "--since",
        "2026-05-02",
        "--until",
        "2026-05-10",
    )
    assert code == 1
    out = project / "reports/drift"
    assert sorted(p.name for p in out.iterdir()) == [
        "drift.html",
        "drift.json",
        "drift_share.png",
        "metrics.json",
        "summary.md",
        "windows.csv",
    ]
    s = summary(project)
    assert s["status"] == "drift" and s["exit_code"] == 1 and s["window"] == "day"
    assert s["reference"]["rows"] == N_TRAIN  # the train split only
    counts = s["current"]["counts"]
    assert s["current"]["rows"] == 240 and counts["bad_lines"] == 1
    assert counts["other_versions"] == {"ihc-classifier 0.9.0": 3}
    # over all six days the two darker ones shift several colour columns; which ones pass
    # p < 0.01 on 240 rows depends on the sample, the per-day windows below name brightness
    assert len(s["overall"]["drifted_columns"]) >= 3

    windows = pd.read_csv(out / "windows.csv")
    assert windows["start"].str[:10].tolist() == [f"2026-05-{d:02d}" for d in range(2, 10)]
    assert windows["rows"].tolist() == [0, 0, 40, 40, 40, 40, 40, 40]
    assert windows["status"].tolist() == ["not_enough_data"] * 2 + ["no_drift"] * 4 + ["drift"] * 2
    assert all("brightness" in cols for cols in windows["drifted_columns"][-2:])

    text = (out / "summary.md").read_text()
    assert text.startswith("# Drift report\n\n**DRIFT: ")
    assert "| brightness | K-S p_value |" in text and "## Per day" in text
    assert "| 2026-05-02 | 0 | n/a | not enough data |" in text
    assert "1 unusable log lines; 3 records of other model versions" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset_drift"] is True and metrics["windows_drifted"] == 2
    assert_self_contained((out / "drift.html").read_text())
    plot, info = read_rgb8(out / "drift_share.png")
    assert info.format == "PNG" and plot.std() > 10


def test_days_like_the_training_data_are_no_drift(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current = str(project / "logs/predictions")
    assert drift(project, "--current", current, "--until", "2026-05-08") == 0
    s = summary(project)
    assert s["status"] == "no_drift" and s["current"]["rows"] == 160
    assert "no drift: " in capsys.readouterr().out
    # the old model's records: excluded above, refused with --strict-version
    code = drift(project, "--current", current, "--until", "2026-05-08", "--strict-version")
    assert code == 2
    assert "3 record(s) from other model versions" in capsys.readouterr().err


def test_too_few_rows_exits_2_with_a_not_enough_data_report(project: Path) -> None:
    current = str(project / "logs/predictions")
    code = drift(project, "--current", current, "--since", "6h", "--until", "2026-05-05T12:00Z")
    assert code == 2
    s = summary(project)
    assert s["status"] == "not_enough_data" and s["current"]["rows"] == 12
    assert (
        "NOT ENOUGH DATA (12 current rows < min_rows 30)"
        in (project / "reports/drift/summary.md").read_text()
    )
    assert not (project / "reports/drift/drift.html").exists()
    code = drift(project, "--current", current, "--until", "2026-05-08", "--exit-zero")
    assert code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reference", "nope.csv"], "nope.csv: reference feature table not found"),
        (["--current", "missing_logs"], "missing_logs: not found (expected a folder"),
        (["--since", "soon"], "--since (expected e.g. 7d"),
        (["--window", "day", "--current", "processed"], "an image folder has no times"),
        (["--drift-share", "2"], "drift.drift_share must be in (0, 1], got 2.0"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    project: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    base = ["--current", str(project / "logs/predictions")]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        assert drift(project, *base, *args) == 2
    assert message in capsys.readouterr().err


def test_a_reference_missing_a_feature_column_is_refused(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = pd.read_csv(project / "reports/data/features.csv").drop(columns=["sharpness"])
    table.to_csv(tmp_path / "features.csv", index=False)
    code = main(
        ["--reference", str(tmp_path / "features.csv"), "--current", str(project / "logs")]
        + ["--params", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "out")]
        + ["--split", "none"]
    )
    assert code == 2 and not (tmp_path / "out").exists()
    assert "features.csv: lacks feature column(s) ['sharpness']" in capsys.readouterr().err


def write_images(folder: Path, images: list[np.ndarray]) -> None:
    folder.mkdir(parents=True)
    for k, rgb in enumerate(images):
        (folder / f"new_{k:03d}.png").write_bytes(encode_png(rgb))


def test_a_new_stain_batch_folder_is_checked_before_use(project: Path, tmp_path: Path) -> None:
    images, _, _ = pool()
    order = np.random.default_rng(7).permutation(len(images))[250:330]
    batch = tmp_path / "batch"
    write_images(batch, [scale_stain(images[i], "dab", 1.8) for i in order])
    (batch / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (batch / "notes.txt").write_text("stain lot 42")
    assert drift(project, "--current", str(batch)) == 1
    s = summary(project)
    assert s["current"]["kind"] == "images" and s["current"]["rows"] == 80
    assert s["current"]["counts"]["unreadable_images"] == 1
    assert s["current"]["counts"]["other_files"] == 1
    assert any("broken.png" in p for p in s["current"]["problems"])
    assert {"dab_mean", "dab_std"} <= set(s["overall"]["drifted_columns"])
    assert "predicted" not in [c["column"] for c in s["overall"]["columns"]]  # no model

    same = tmp_path / "same"
    write_images(same, [images[i] for i in order])
    assert drift(project, "--current", str(same)) == 0


def test_the_ihcflow_command_has_drift(project: Path) -> None:
    args = ihcflow_cli.build_parser().parse_args(
        ["drift", "--current", str(project / "logs/predictions"), "--until", "2026-05-08"]
        + ["--reference", str(project / "reports/data/features.csv"), "--root", str(project)]
        + ["--out", str(project / "reports/drift"), "--params", str(project / "none.yaml")]
    )
    assert args.func(args) == 0


# ---------------------------------------------------------------------- with a registered model

PREPROCESS = plain_preprocess(SIZE)


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with a trained and registered tiny model (tests/integration/test_register.py)
    and its features.csv: 3 colour classes, 12 px images, 60 training images."""
    root = tmp_path_factory.mktemp("drift_model")
    split = write_colour_dataset(root, per_class=45, noise=25.0)
    predictor = TinyPredictor(train_tiny(root))
    predictor.config["preprocess"] = PREPROCESS  # model.json records what the model was fed
    ev = evaluate_tiny(root, predictor, batch_size=16, max_images=0)
    register_tiny(ev, PASSING)
    rows = [
        {**r, **image_features(read_rgb8(root / r["image"])[0], SIZE)}
        for r in split.to_dict("records")
    ]
    features_csv(root / "reports/data/features.csv", rows)
    return root


def colour_images(n: int, seed: int, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    colours = list(COLOURS.values())
    images = [colour_image(colours[k % 3], rng, 25.0, SIZE) for k in range(n)]
    return [scale_brightness(x, scale) for x in images]


def test_model_embeddings_and_predictions_on_a_new_folder(registered: Path, tmp_path: Path) -> None:
    model = str(registered / "models/model.onnx")
    write_images(tmp_path / "same", colour_images(60, seed=11))
    assert drift(registered, "--current", str(tmp_path / "same"), "--model", model) == 0
    s = summary(registered)
    emb = s["overall"]["embedding"]
    assert emb is not None and emb["dim"] == 3 and not emb["drifted"]
    assert s["model"] == "tiny 1.0.0" and s["reference"]["rows"] == 90
    assert "predicted" in [c["column"] for c in s["overall"]["columns"]]
    assert any("model tiny 1.0.0 on the 90 train images" in n for n in s["reference"]["notes"])
    [cached] = (registered / ".cache/drift").glob("reference-*.npz")
    stamp = cached.stat().st_mtime_ns
    html = (registered / "reports/drift/drift.html").read_text()
    assert "Drift in embeddings" in html  # Evidently's embeddings widget

    write_images(tmp_path / "darker", colour_images(60, seed=12, scale=0.7))
    assert drift(registered, "--current", str(tmp_path / "darker"), "--model", model) == 1
    emb = summary(registered)["overall"]["embedding"]
    assert emb["drifted"] and emb["score"] > emb["threshold"]
    assert cached.stat().st_mtime_ns == stamp  # reference embeddings reused from the cache


def test_model_logs_of_another_version_are_excluded(registered: Path, tmp_path: Path) -> None:
    model = load_model(registered / "models/model.onnx")
    images = colour_images(50, seed=13)
    probs, emb = model.run(np.stack(images))
    records = [
        log_record(
            DAY0 + dt.timedelta(minutes=k),
            image_features(rgb, SIZE),
            model.predicted(probs[k : k + 1])[0],
            model_name=model.name,
            model_version="1.0.0" if k < 40 else "0.1.0",  # 10 from an older model
            embedding=emb[k].tolist(),
        )
        for k, rgb in enumerate(images)
    ]
    write_logs(tmp_path / "logs", records)
    args = ["--current", str(tmp_path / "logs"), "--model", str(model.path)]
    assert drift(registered, *args) == 0
    s = summary(registered)
    assert s["current"]["rows"] == 40 and s["current"]["counts"]["other_version_rows"] == 10
    assert s["overall"]["embedding"] is not None
    assert drift(registered, *args, "--strict-version") == 2


# ---------------------------------------------------------------- real images, real browser


needs_pbc = pytest.mark.skipif(not PBC_SAMPLE.is_dir(), reason="no ../shared/datasets/pbc-sample")


@pytest.fixture(scope="module")
def pbc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """Real blood-cell images: every second one is the reference, a quarter of the others
    (100, all 8 classes) the new batch."""
    root = tmp_path_factory.mktemp("pbc")
    files = sorted(PBC_SAMPLE.glob("*/*.jpg"))
    rows = []
    for path in files[0::2]:
        rel = str(path.relative_to(PBC_SAMPLE))
        feats = image_features(read_rgb8(path)[0], PBC_SIZE)
        rows.append({"path": rel, "class": path.parent.name, "sha256": rel, **feats})
    features_csv(root / "reports/data/features.csv", rows)
    params_yaml(root, PBC_SIZE)
    return root, [read_rgb8(p)[0] for p in files[1::2][::4]]


@pytest.mark.slow
@needs_pbc
def test_pbc_sample_from_the_same_source_is_no_drift(
    pbc: tuple[Path, list[np.ndarray]], tmp_path: Path
) -> None:
    root, images = pbc
    write_images(tmp_path / "same", images)
    assert drift(root, "--current", str(tmp_path / "same")) == 0


@pytest.mark.slow
@needs_pbc
@pytest.mark.parametrize(
    ("change", "column"),
    [
        (lambda x: scale_brightness(x, 0.85), "brightness"),
        (lambda x: scale_stain(x, "hematoxylin", 1.3), "hematoxylin_mean"),
        (lambda x: scale_stain(x, "eosin", 1.3), "eosin_mean"),
    ],
    ids=["darker", "hematoxylin", "eosin"],
)
def test_pbc_sample_scanner_and_stain_changes_are_found(
    pbc: tuple[Path, list[np.ndarray]], tmp_path: Path, change: Any, column: str
) -> None:
    root, images = pbc
    write_images(tmp_path / "batch", [change(x) for x in images])
    assert drift(root, "--current", str(tmp_path / "batch")) == 1
    assert column in summary(root)["overall"]["drifted_columns"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium not installed")
def test_the_html_report_renders_in_headless_chromium(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    code = drift(project, "--current", str(project / "logs/predictions"), "--window", "day")
    assert code == 1
    shutil.copytree(project / "reports/drift", out)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1400,2000",
            "--virtual-time-budget=10000",
            (out / "drift.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    pixels, _ = read_rgb8(shot)
    assert pixels.shape[:2] == (2000, 1400)
    # not blank: the banner, the plot and Evidently's widgets put lots of structure on the page
    assert pixels.std() > 20
    lower = pixels[1000:].astype(float)  # Evidently's part (drawn by its inlined JavaScript)
    assert lower.std() > 10 and (lower.min(axis=2) < 128).mean() > 0.01
