"""preprocess_dataset and the preprocess stage on a tiny generated data folder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

import ihcflow.preprocess as pp
from ihcflow.config import ConfigError
from ihcflow.files import sha256_file
from ihcflow.images.codec import read_rgb8
from ihcflow.preprocess import (
    OUTPUT_COLUMNS,
    PreprocessError,
    PreprocessParams,
    cache_key,
    preprocess_dataset,
)

ROOT = Path(__file__).resolve().parents[2]
SIZE = 24


def _write_image(path: Path, seed: int, shape=(40, 56)) -> None:
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 2)[..., None]
    t = np.clip((t - t.min()) / (t.max() - t.min()) * 2 - 0.5, 0, 1)  # contrast ~0.2
    scale = 0.4 if seed % 3 == 0 else 1.0  # every third image is dark: auto-corrected
    bgr = (np.array([230.0, 190.0, 235.0]) * (1 - t) + np.array([120, 40, 80]) * t) * scale
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), bgr.astype(np.uint8))


def _manifest(data: Path) -> pd.DataFrame:
    """Every file as a manifest row, unvalidated: so that the tests can hand preprocess the
    duplicates and damaged files that the validate stage would have dropped."""
    rows = [
        {
            "path": p.relative_to(data).as_posix(),
            "class": p.parent.name,
            "given_split": "",
            "sha256": sha256_file(p),
        }
        for p in sorted(data.rglob("*.*"))
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for i in range(10):
        suffix = ".jpg" if i % 2 else ".png"
        _write_image(root / ("ki67" if i < 5 else "her2") / f"img{i}{suffix}", seed=i)
    return root


@pytest.fixture
def cfg():
    cfg = OmegaConf.load(ROOT / "conf" / "preprocess" / "default.yaml")
    cfg.size = SIZE
    return cfg


def _run(data: Path, out: Path, cfg, cache: Path | None, workers: int = 1, manifest=None):
    manifest = _manifest(data) if manifest is None else manifest
    params = PreprocessParams.from_section(cfg)
    return preprocess_dataset(manifest, data, out, params, cache_dir=cache, workers=workers)


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_outputs_and_features_follow_the_contract(tmp_path, data, cfg) -> None:
    out = tmp_path / "processed" / "images"
    manifest = _manifest(data)
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
    _write_image(data / "ki67" / "new.png", seed=99)
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
    manifest = _manifest(data)
    _write_image(data / "ki67" / "img2.png", seed=42)
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
    manifest = _manifest(data).drop(columns=["sha256"])
    with pytest.raises(ValueError, match=r"manifest lacks columns \['sha256'\]"):
        _run(data, tmp_path / "out", cfg, tmp_path / "cache", manifest=manifest)


def _stage():
    spec = importlib.util.spec_from_file_location("stage_preprocess", ROOT / "stages/preprocess.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_writes_the_documented_outputs(tmp_path, data, cfg, capsys) -> None:
    cfg.cache_dir = str(tmp_path / "cache")
    params = tmp_path / "params.yaml"
    OmegaConf.save(OmegaConf.create({"preprocess": cfg, "seed": 0}), params)
    manifest = tmp_path / "processed" / "manifest.csv"
    manifest.parent.mkdir()
    _manifest(data).to_csv(manifest, index=False)
    features_csv = tmp_path / "reports" / "data" / "features.csv"
    report_json = tmp_path / "reports" / "data" / "preprocess.json"
    args = [
        f"--params={params}",
        f"--data={data}",
        f"--manifest={manifest}",
        f"--out={tmp_path / 'processed' / 'images'}",
        f"--features={features_csv}",
        f"--report={report_json}",
    ]
    _stage().main(args)
    features = pd.read_csv(features_csv, keep_default_na=False)
    assert list(features.columns) == OUTPUT_COLUMNS and len(features) == 10
    report = json.loads(report_json.read_text())
    assert report["n"] == 10 and report["params"]["size"] == SIZE
    assert "10 images, 0 cached, 10 processed" in capsys.readouterr().out
    _stage().main(args)
    assert "10 images, 10 cached, 0 processed" in capsys.readouterr().out


def test_stage_without_manifest_says_what_to_run(tmp_path, cfg) -> None:
    with pytest.raises(PreprocessError, match=r"manifest not found \(run the validate stage"):
        _stage().run(
            PreprocessParams.from_section(cfg),
            data=tmp_path / "data",
            manifest=tmp_path / "manifest.csv",
            images=tmp_path / "out",
            features=tmp_path / "features.csv",
            report=tmp_path / "report.json",
        )
