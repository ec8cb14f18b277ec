"""preprocess_dataset and the preprocess stage on a tiny generated data folder."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from omegaconf import DictConfig, OmegaConf

import ihcflow.preprocess as pp
from ihcflow.config import ConfigError
from ihcflow.files import sha256_file
from ihcflow.images.codec import read_rgb8
from ihcflow.images.prepare import ImageParams, prepare_image
from ihcflow.preprocess import (
    OUTPUT_COLUMNS,
    PreprocessError,
    PreprocessParams,
    cache_key,
    preprocess_dataset,
)
from tests.helpers import conf_section
from tests.helpers.data import manifest_of, preprocess_conf, write_tissue, write_tissue_folder

SIZE = 24


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_tissue_folder(tmp_path / "data")


@pytest.fixture
def cfg() -> DictConfig:
    return preprocess_conf(SIZE)


def _run(data: Path, out: Path, cfg, cache: Path | None, workers: int = 1, manifest=None):
    manifest = manifest_of(data) if manifest is None else manifest
    params = PreprocessParams.from_section(cfg)
    return preprocess_dataset(manifest, data, out, params, cache_dir=cache, workers=workers)


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_outputs_and_features_follow_the_contract(tmp_path, data, cfg) -> None:
    out = tmp_path / "processed" / "images"
    manifest = manifest_of(data)
    features, stats = _run(data, out, cfg, tmp_path / "cache", manifest=manifest)

    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.png" for s in manifest.sha256)
    for row in features.itertuples():
        rgb, _ = read_rgb8(out / f"{row.sha256}.png")
        assert rgb.shape == (SIZE, SIZE, 3)
        assert row.processed_sha256 == sha256_file(out / f"{row.sha256}.png")
        assert (row.width, row.height) == (56, 40)
    assert list(features.columns) == OUTPUT_COLUMNS
    assert features["path"].tolist() == manifest["path"].tolist()
    assert set(features["corrected"]) == {0, 1}  # dark ones corrected, the others not
    assert stats["n"] == stats["n_processed"] == 10 and stats["n_cached"] == 0
    assert stats["n_corrected"] == int(features["corrected"].sum())
    assert stats["n_stain_normalized"] == 0
    assert stats["params_hash"] == cache_key(PreprocessParams.from_section(cfg))
    assert stats["images_per_s"] > 0


def test_second_run_is_all_cached_and_byte_identical(tmp_path, data, cfg) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    first, _ = _run(data, out, cfg, cache)
    before = _outputs(out)
    again, stats = _run(data, out, cfg, cache)
    assert stats["n_cached"] == 10 and stats["n_processed"] == 0
    assert _outputs(out) == before
    pd.testing.assert_frame_equal(first, again)


def test_pixel_params_miss_the_cache_but_workers_and_cache_dir_do_not(tmp_path, data, cfg) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    _run(data, out, cfg, cache)
    before = _outputs(out)

    cfg.workers = 7
    cfg.cache_dir = "elsewhere"
    _, stats = _run(data, out, cfg, cache, workers=2)
    assert stats["n_cached"] == 10

    cfg.denoise.ksize = 5
    _, stats = _run(data, out, cfg, cache)
    assert stats["n_processed"] == 10
    assert _outputs(out) != before


def test_adding_one_image_processes_only_that_one(tmp_path, data, cfg) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    _run(data, out, cfg, cache)
    write_tissue(data / "ki67" / "new.png", seed=99)
    features, stats = _run(data, out, cfg, cache)
    assert (stats["n"], stats["n_cached"], stats["n_processed"]) == (11, 10, 1)
    assert len(list(out.iterdir())) == 11
    assert "ki67/new.png" in set(features["path"])


def test_parallel_and_serial_results_are_identical(tmp_path, data, cfg, monkeypatch) -> None:
    serial, stats_serial = _run(data, tmp_path / "a", cfg, tmp_path / "cache_a", workers=1)
    monkeypatch.setattr(pp, "_MIN_PARALLEL", 1)  # use the pool even for 10 images
    parallel, stats = _run(data, tmp_path / "b", cfg, tmp_path / "cache_b", workers=2)
    assert stats["workers"] == 2 and stats["n_processed"] == 10
    pd.testing.assert_frame_equal(serial, parallel)
    assert _outputs(tmp_path / "a") == _outputs(tmp_path / "b")


def test_interrupted_cache_entries_are_ignored(tmp_path, data, cfg) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    features, _ = _run(data, out, cfg, cache)
    before = _outputs(out)
    shas = features["sha256"].tolist()
    entries = cache / cache_key(PreprocessParams.from_section(cfg))
    records = json.loads((entries / "records.json").read_text())
    # a run killed after publishing an image but before recording it
    del records[shas[0]]
    (entries / "records.json").write_text(json.dumps(records))
    # a run killed while publishing: only a temporary file
    (entries / shas[1][:2] / f"{shas[1]}.png.x1y2.tmp").write_bytes(b"\x89PNG half")
    # an image truncated behind its record's back
    (entries / shas[2][:2] / f"{shas[2]}.png").write_bytes(b"\x89PNG")
    # a killed run's journal, its last line torn
    (entries / "journal-1-dead.jsonl").write_text(f'{{"sha256": "{shas[3]}", "png_')
    _, stats = _run(data, out, cfg, cache)
    assert stats["n_processed"] == 2 and stats["n_cached"] == 8
    assert _outputs(out) == before
    assert not list(entries.glob("journal-*"))  # merged into records.json


def test_a_failed_run_keeps_its_finished_work(tmp_path, data, cfg) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    broken = data / "ki67" / "zbroken.png"  # last in path order: processed after the others
    broken.write_bytes(b"not an image at all")
    with pytest.raises(PreprocessError):
        _run(data, out, cfg, cache)
    broken.unlink()
    _, stats = _run(data, out, cfg, cache)
    assert (stats["n_cached"], stats["n_processed"]) == (10, 0)  # from the failed run's journal


def test_lost_cache_records_only_cost_time(tmp_path, data, cfg) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    _run(data, out, cfg, cache)
    before = _outputs(out)
    (cache / cache_key(PreprocessParams.from_section(cfg)) / "records.json").write_text(
        '{"truncated": '
    )
    _, stats = _run(data, out, cfg, cache)
    assert stats["n_processed"] == 10
    assert _outputs(out) == before
    _, stats = _run(data, out, cfg, cache)
    assert stats["n_cached"] == 10


def test_output_folder_is_rebuilt(tmp_path, data, cfg) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    _run(data, out, cfg, tmp_path / "cache")
    assert not (out / "stale.png").exists()
    assert len(list(out.iterdir())) == 10


def test_without_cache_gives_the_same_result(tmp_path, data, cfg) -> None:
    cached, _ = _run(data, tmp_path / "a", cfg, tmp_path / "cache")
    uncached, stats = _run(data, tmp_path / "b", cfg, None)
    assert stats["n_processed"] == 10
    pd.testing.assert_frame_equal(cached, uncached)
    assert _outputs(tmp_path / "a") == _outputs(tmp_path / "b")


def test_duplicate_content_gives_one_image_and_two_rows(tmp_path, data, cfg) -> None:
    (data / "her2" / "copy.png").write_bytes((data / "ki67" / "img0.png").read_bytes())
    features, stats = _run(data, tmp_path / "out", cfg, tmp_path / "cache")
    assert stats["n"] == 11 and stats["n_processed"] == 10
    assert len(list((tmp_path / "out").iterdir())) == 10


def test_file_changed_since_validation_is_named(tmp_path, data, cfg) -> None:
    manifest = manifest_of(data)
    write_tissue(data / "ki67" / "img2.png", seed=42)
    with pytest.raises(PreprocessError, match=r"img2\.png: content changed since validation"):
        _run(data, tmp_path / "out", cfg, tmp_path / "cache", manifest=manifest)


def test_undecodable_file_is_named_and_old_outputs_survive(tmp_path, data, cfg) -> None:
    out = tmp_path / "out"
    _run(data, out, cfg, tmp_path / "cache")
    before = _outputs(out)
    (data / "ki67" / "zbroken.png").write_bytes(b"not an image at all")
    with pytest.raises(PreprocessError, match=r"zbroken\.png: not an image"):
        _run(data, out, cfg, tmp_path / "cache")
    assert _outputs(out) == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"denoise": {"method": "wavelet"}}, "denoise method 'wavelet' unknown"),
        ({"interpolation": "bicubic"}, "interpolation 'bicubic' unknown"),
        ({"auto_correct": {"percentiles": [99, 1]}}, "auto_correct percentiles must be"),
    ],
)
def test_bad_params_are_refused_before_any_work(tmp_path, data, cfg, change, message) -> None:
    cfg = OmegaConf.merge(cfg, change)
    with pytest.raises(ConfigError, match=f"params `preprocess`: {message}"):
        _run(data, tmp_path / "out", cfg, tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_manifest_without_required_columns_is_refused(tmp_path, data, cfg) -> None:
    manifest = manifest_of(data).drop(columns=["sha256"])
    with pytest.raises(ValueError, match=r"manifest lacks columns \['sha256'\]"):
        _run(data, tmp_path / "out", cfg, tmp_path / "cache", manifest=manifest)


@pytest.mark.parametrize("denoise", ["median", "none"])
def test_a_jpeg_decoded_at_reduced_scale_gives_the_same_image(tmp_path, denoise) -> None:
    """With nothing to denoise, JPEGs >= 8x the model size are decoded at 1/2..1/8 scale: the
    model sees the same picture (mean |difference| under 2 grey levels) and the file's own
    size is recorded. A median is only a median at full size: then nothing changes."""
    params = ImageParams.from_section({**preprocess_conf(SIZE), "denoise": {
        **conf_section("preprocess")["denoise"], "method": denoise}})  # fmt: skip
    write_tissue(tmp_path / "t.png", seed=1, shape=(48, 62))  # tissue the model size resolves,
    small = cv2.imread(str(tmp_path / "t.png"))  # photographed at 4x: a 1/2 scale decode
    big = cv2.resize(small, (250, 193), interpolation=cv2.INTER_CUBIC)  # is 97 x 125 >= 4 x 24
    data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    fast, full = (prepare_image(data, "big.jpg", params, full_decode=f) for f in (False, True))
    assert fast.image.shape == full.image.shape == (SIZE, SIZE, 3)
    assert np.abs(fast.image.astype(int) - full.image).mean() < 2.0
    if denoise != "none":
        np.testing.assert_array_equal(fast.image, full.image)
    assert (fast.acquisition["width"], fast.acquisition["height"]) == (250, 193)
    assert fast.features.keys() == full.features.keys()
    for name in ("brightness", "mean_r", "dab_mean", "hematoxylin_mean"):
        assert fast.features[name] == pytest.approx(full.features[name], rel=0.03, abs=0.01)


def test_a_worker_process_starts_without_pandas() -> None:
    """What a preprocess worker imports (the stage script, re-run by multiprocessing, and the
    per-file module) stays light: pandas would double every worker's start-up."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('__mp_main__', 'stages/preprocess.py')\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "import ihcflow.images.worker\n"
        "print(sorted(m for m in ('pandas', 'torch', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
