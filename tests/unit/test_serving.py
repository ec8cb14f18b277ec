"""Serving parts on their own: settings, the prediction log, loading the model, the app's
not-ready and log-failure paths. The model is a real ONNX graph built here (no torch)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI

from ihcflow.files import sha256_file
from ihcflow.images.codec import ImageError
from ihcflow.ood import fit_ood
from ihcflow.prediction_log import PredictionLog, iso_z, read_log
from ihcflow.serving import ModelLoadError, ServedModel, Settings, SettingsError, create_app
from ihcflow.serving.settings import available_cpus, parse_size
from tests.helpers import REPO
from tests.helpers.data import png, png_bytes
from tests.helpers.models import ONNX_CLASSES as CLASSES
from tests.helpers.models import ONNX_SIZE as SIZE
from tests.helpers.models import mean_colour_onnx, write_model

# --- settings ---------------------------------------------------------------------------------


def test_settings_from_env_with_flags_winning(tmp_path: Path) -> None:
    env = {
        "IHCFLOW_MODEL_DIR": "/srv/models",
        "IHCFLOW_PORT": "9000",
        "IHCFLOW_MAX_BYTES": "5M",
        "IHCFLOW_MAX_PIXELS": "4_000_000",
        "IHCFLOW_LOG_IMAGES": "/srv/uploads",
        "IHCFLOW_LOG_IMAGES_RETENTION_DAYS": "30",
        "IHCFLOW_LOG_EMBEDDING": "off",
        "IHCFLOW_TOKEN": " abc123 ",
    }
    s = Settings.from_env(env, port=9100, max_files=None)
    assert s.model_dir == Path("/srv/models") and s.port == 9100  # the flag wins
    assert s.max_bytes == 5 << 20 and s.max_pixels == 4_000_000 and s.max_files == 16
    assert s.log_images == Path("/srv/uploads") and s.log_images_retention_days == 30
    assert not s.log_embedding and s.token == "abc123" and s.auth_enabled
    assert "abc123" not in repr(s)  # never printed with the settings
    assert Settings.from_env({}) == Settings()
    assert not Settings().auth_enabled
    assert Settings.from_env(s.to_env()) == s  # what worker processes rebuild


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IHCFLOW_PORT": "eighty"}, r"IHCFLOW_PORT='eighty'"),
        ({"IHCFLOW_MAX_BYTES": "10 parsecs"}, r"IHCFLOW_MAX_BYTES=.*not a size"),
        ({"IHCFLOW_LOG_EMBEDDING": "maybe"}, r"IHCFLOW_LOG_EMBEDDING=.*not a boolean"),
        ({"IHCFLOW_LOG_IMAGES": "/srv/up"}, r"log_images needs a retention: set log_images_ret"),
        ({"IHCFLOW_LOG_IMAGES_RETENTION_DAYS": "7"}, r"log_images is not: no uploads are kept"),
        ({"IHCFLOW_LOG_IMAGES": "up", "IHCFLOW_LOG_IMAGES_RETENTION_DAYS": "0"}, "got 0"),
        ({"IHCFLOW_MAX_FILES": "0"}, r"max_files must be >= 1"),
        ({"IHCFLOW_TOKEN": "a", "IHCFLOW_TOKEN_FILE": "/x"}, "not both"),
        ({"IHCFLOW_TOKEN_FILE": "/nonexistent/token"}, "cannot read the token"),
        ({"IHCFLOW_TOKEN": "two words"}, "whitespace"),
        ({"IHCFLOW_TOKEN": ""}, "IHCFLOW_TOKEN is set but empty.*--no-auth"),
        ({"IHCFLOW_TOKEN": "  "}, "IHCFLOW_TOKEN is set but empty"),
        ({"IHCFLOW_TOKEN": "abc", "IHCFLOW_NO_AUTH": "1"}, "choose one"),
        ({"IHCFLOW_MIN_SIDE": "0"}, "min_side must be >= 1"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_empty_token_serves_open_only_with_no_auth() -> None:
    assert not Settings.from_env({"IHCFLOW_TOKEN": ""}, no_auth=True).auth_enabled
    assert not Settings.from_env({"IHCFLOW_TOKEN": "", "IHCFLOW_NO_AUTH": "1"}).auth_enabled
    assert not Settings.from_env({}).auth_enabled  # no variable at all: open, as before


def test_token_from_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-a-secret\n")
    assert (
        Settings.from_env({"IHCFLOW_TOKEN_FILE": str(tmp_path / "token")}).token == "from-a-secret"
    )
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SettingsError, match="is empty"):
        Settings.from_env({"IHCFLOW_TOKEN_FILE": str(tmp_path / "empty")})


def test_parse_size() -> None:
    assert [parse_size(t) for t in ("100", "1k", "20M", "20MiB", "1G", "3 mb")] == [
        100, 1024, 20 << 20, 20 << 20, 1 << 30, 3 << 20,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "max 100000\n"}, 2),  # no limit: the two CPUs of this machine
        ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU: one thread
        ({"cpu.max": "150000 100000\n"}, 2),
        ({"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}, 1),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, 2),
    ],
)
def test_cpus_follow_the_container_cpu_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], expected: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert available_cpus(tmp_path) == expected


# --- the prediction log -----------------------------------------------------------------------


def _record(ts: dt.datetime, i: int) -> dict[str, Any]:
    return {"ts": iso_z(ts), "request_id": f"r{i}", "predicted": "pos", "probs": {"pos": 1.0}}


def test_log_rotates_by_utc_day(tmp_path: Path) -> None:
    day1 = dt.datetime(2026, 3, 1, 23, 59, 59, tzinfo=dt.UTC)
    log = PredictionLog(tmp_path / "logs")
    log.write([_record(day1, 0), _record(day1, 1)])
    # 00:30 in Berlin is still March 1st in UTC
    berlin = dt.timezone(dt.timedelta(hours=1))
    log.write([_record(dt.datetime(2026, 3, 2, 0, 30, tzinfo=berlin), 2)])
    log.write([_record(day1 + dt.timedelta(seconds=2), 3)])
    log.close()
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["predictions-2026-03-01.jsonl", "predictions-2026-03-02.jsonl"]
    first = read_log(tmp_path / "logs" / files[0])
    assert [r["request_id"] for r in first] == ["r0", "r1", "r2"]
    assert first[0]["ts"] == "2026-03-01T23:59:59.000Z"
    assert [r["request_id"] for r in read_log(tmp_path / "logs" / files[1])] == ["r3"]


def test_log_lines_never_interleave_across_threads(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path)
    now = dt.datetime.now(dt.UTC)
    big = {"embedding": [0.123456] * 2000}  # ~20 KB lines

    def writer(t: int) -> None:
        for i in range(50):
            log.write([{**_record(now, t * 1000 + i), **big}])

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    [path] = tmp_path.glob("*.jsonl")
    records = read_log(path)  # every line parses
    assert sorted(r["request_id"] for r in records) == sorted(
        f"r{t * 1000 + i}" for t in range(4) for i in range(50)
    )


def test_log_file_removed_by_a_clean_up_is_recreated(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "logs")
    now = dt.datetime.now(dt.UTC)
    log.write([_record(now, 0)])
    [path] = (tmp_path / "logs").glob("*.jsonl")
    path.unlink()
    log.write([_record(now, 1)])
    assert [r["request_id"] for r in read_log(path)] == ["r1"]


def test_killed_writer_loses_nothing_it_reported_written(tmp_path: Path) -> None:
    script = (
        "import datetime as dt, sys\n"
        "from ihcflow.prediction_log import PredictionLog, iso_z\n"
        f"log = PredictionLog({str(tmp_path)!r})\n"
        "for i in range(100000):\n"
        "    log.write([{'ts': iso_z(dt.datetime.now(dt.UTC)), 'request_id': str(i),"
        " 'pad': 'x' * 3000}])\n"
        "    print(i, flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env) as proc:
        assert proc.stdout is not None
        reported = -1
        while reported < 200:
            reported = int(proc.stdout.readline())
        proc.send_signal(signal.SIGKILL)  # mid-write, no clean-up
        proc.wait()
    [path] = tmp_path.glob("*.jsonl")
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a complete line
    records = [json.loads(line) for line in lines[:-1]]
    assert [int(r["request_id"]) for r in records] == list(range(len(records)))
    assert len(records) >= reported + 1


def test_record_after_a_partial_last_line_starts_a_new_line(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    log = PredictionLog(tmp_path)
    log.write([_record(now, 0)])
    [path] = tmp_path.glob("*.jsonl")
    with open(path, "ab") as fh:  # a writer killed mid-line (another worker, or us earlier)
        fh.write(b'{"ts": "2026-01-01T00:00:00.000Z", "request_id": "cut", "predi')
    log.write([_record(now, 1)])  # the descriptor is already open
    log.close()
    with open(path, "ab") as fh:
        fh.write(b'{"ts": "2026')
    PredictionLog(tmp_path).write([_record(now, 2)])  # a restarted server
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    good = [json.loads(line) for line in lines[:-1] if not line.startswith(b'{"ts": ')]
    assert [r["request_id"] for r in good] == ["r0", "r1", "r2"]  # none glued to a fragment
    assert len(lines) == 6  # r0, fragment, r1, fragment, r2, ""


# --- the model ----------------------------------------------------------------------------------


def test_served_model_prepares_like_the_pipeline_and_predicts(tmp_path: Path) -> None:
    model = ServedModel.load(write_model(tmp_path / "m"))
    assert (model.name, model.version, model.class_names, model.embed_dim) == (
        "unit", "2.1.0", CLASSES, 3
    )  # fmt: skip
    prepared = model.prepare(png((230, 20, 20)), "red.png", max_pixels=10_000)
    assert prepared.image.shape == (SIZE, SIZE, 3) and prepared.format == "PNG"
    assert prepared.acquisition["width"] == 20 and prepared.acquisition["height"] == 30
    probs, embedding = model.predict(prepared.image[None])
    np.testing.assert_allclose(embedding[0], np.array([230, 20, 20]) / 255, atol=1e-6)
    assert CLASSES[int(probs[0].argmax())] == "neg" and probs.sum() == pytest.approx(1)
    with pytest.raises(ValueError, match=r"big.png: image too large: 200x100 = 20000 pixels"):
        model.prepare(png((1, 2, 3), (200, 100)), "big.png", max_pixels=10_000)
    with pytest.raises(ValueError, match=r"anim.gif: GIF images are not accepted"):
        model.prepare(png((1, 2, 3), fmt="GIF"), "anim.gif", max_pixels=10_000)
    for size in ((1, 1), (3, 3), (10_000, 1), (15, 40)):
        with pytest.raises(ImageError) as err:
            model.prepare(png((1, 2, 3), size), "tiny.png", max_pixels=10**6, min_side=16)
        assert err.value.reason == "too_small" and "minimum of 16 px" in str(err.value)
    assert model.prepare(png((1, 2, 3), (16, 40)), "ok.png", max_pixels=10**6, min_side=16)


def test_model_folder_problems_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"none/model.json: no registered model"):
        ServedModel.load(tmp_path / "none")
    folder = write_model(tmp_path / "a")
    (folder / "model.onnx").write_bytes((folder / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ModelLoadError, match="does not match model.json"):
        ServedModel.load(folder)
    with pytest.raises(ModelLoadError, match=r"preprocess.interpolation`: missing"):
        ServedModel.load(write_model(tmp_path / "b", preprocess={"size": SIZE}))
    with pytest.raises(ModelLoadError, match="differs from input_size 16"):
        ServedModel.load(write_model(tmp_path / "c", input_size=16))
    with pytest.raises(ModelLoadError, match=r"probs shape \(1, 3\), expected \(1, 2\)"):
        ServedModel.load(write_model(tmp_path / "d", class_names=["a", "b"]))
    wrong = write_model(tmp_path / "e")
    mean_colour_onnx(wrong / "model.onnx", outputs=("scores", "features"))
    info = json.loads((wrong / "model.json").read_text())
    info["onnx"]["sha256"] = sha256_file(wrong / "model.onnx")
    (wrong / "model.json").write_text(json.dumps(info))
    with pytest.raises(ModelLoadError, match=r"missing output\(s\) \['probs', 'embedding'\]"):
        ServedModel.load(wrong)


def test_serving_imports_no_training_stack() -> None:
    """The server reads the model through ihcflow.model_format: not the registry, the pipeline
    tables or the training code (nor pandas, which they need)."""
    code = (
        "import sys, ihcflow.serving.app, ihcflow.serving.cli\n"
        "print(sorted(m for m in ('torch', 'pytorch_lightning', 'lightning', 'dvc', 'hydra',"
        " 'sklearn', 'skimage', 'evidently', 'matplotlib', 'pandas', 'ihcflow.registry',"
        " 'ihcflow.tables', 'ihcflow.training') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# --- the app in-process -------------------------------------------------------------------------


@contextmanager
def serve(app: FastAPI) -> Iterator[httpx.Client]:
    """uvicorn on a free loopback port in a thread of this process, with a client for it."""
    server = uvicorn.Server(uvicorn.Config(app, port=0, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)


def test_app_without_a_model_is_alive_but_not_ready(tmp_path: Path) -> None:
    settings = Settings(model_dir=tmp_path / "missing", log_dir=tmp_path / "logs")
    with serve(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        predict = client.post("/predict", files=[("files", ("a.png", png((1, 2, 3))))])
        metrics = client.get("/metrics").text
    assert ready.status_code == 503 and "no registered model" in ready.json()["detail"]
    assert (predict.status_code, predict.json()["error"]) == (503, "not_ready")
    assert "ihcflow_model_ready 0.0" in metrics


def test_prediction_that_cannot_be_logged_is_not_returned(tmp_path: Path) -> None:
    settings = Settings(model_dir=write_model(tmp_path / "m"), log_dir=tmp_path / "logs")
    with serve(create_app(settings)) as client:
        first = client.post("/predict", files=[("files", ("a.png", png((200, 10, 10))))])
        assert first.status_code == 200 and first.json()["predictions"][0]["predicted"] == "neg"
        for path in (tmp_path / "logs").iterdir():
            path.unlink()
        (tmp_path / "logs").rmdir()
        (tmp_path / "logs").write_text("a file where the log folder was")  # writes now fail
        second = client.post("/predict", files=[("files", ("b.png", png((10, 200, 10))))])
        metrics = client.get("/metrics").text
    assert (second.status_code, second.json()["error"]) == (503, "log_unavailable")
    assert "ihcflow_prediction_log_errors_total 1.0" in metrics


def colour_ood(quantile: float = 0.99, zoom: float | None = None) -> dict[str, Any]:
    """model.json's ``ood`` for :func:`mean_colour_onnx`, whose embedding is the mean RGB:
    trained on reddish, greenish and grey images of one colour (``zoom``: with the framing
    check; a one-colour image's centre has the same mean, up to noise)."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.85, 0.1, 0.1], [0.1, 0.85, 0.1], [0.5, 0.5, 0.5]])
    labels = np.arange(600) % 3
    train = centres[labels] + rng.normal(0, 0.03, (600, 3))
    val = centres[np.arange(100) % 3] + rng.normal(0, 0.03, (100, 3))
    zoomed = None if zoom is None else val + rng.normal(0, 0.01, val.shape)
    scorer = fit_ood(train, labels, 3, components=3)
    return scorer.calibrated(val, quantile, zoomed, zoom).to_info()


def test_every_image_gets_an_ood_score_returned_logged_and_counted(tmp_path: Path) -> None:
    settings = Settings(model_dir=write_model(tmp_path / "m", ood=colour_ood()), log_dir=tmp_path)
    uploads = [
        ("files", ("red.png", png((215, 28, 25)))),
        ("files", ("blue.png", png((20, 20, 230)))),
    ]
    with serve(create_app(settings)) as client:
        response = client.post("/predict", files=uploads)
        model = client.get("/model").json()
        ready = client.get("/readyz").json()
        metrics = client.get("/metrics").text
    assert response.status_code == 200, response.text
    red, blue = (p["ood"] for p in response.json()["predictions"])
    assert red["flag"] is False and blue["flag"] is True  # blue: no training class is blue
    assert red["score"] < model["ood"]["threshold"] < blue["score"]
    [path] = tmp_path.glob("*.jsonl")
    assert [r["ood"] for r in read_log(path)] == [red, blue]
    assert model["ood"]["available"] and model["ood"]["quantile"] == 0.99 and ready["ood"]
    assert 'ihcflow_ood_flagged_total{model_version="2.1.0"} 1.0' in metrics
    assert 'ihcflow_ood_score_ratio_count{model_version="2.1.0"} 2.0' in metrics
    assert 'ihcflow_ood_score_ratio_bucket{le="1.0",model_version="2.1.0"} 1.0' in metrics


def test_an_image_framed_wider_than_the_training_images_is_flagged_misframed(
    tmp_path: Path,
) -> None:
    """The framing check: the model saw one-colour images; a red field inside a wide blue
    border is far from every class, and its centre (half of each side) is plain red."""
    ood = colour_ood(zoom=0.5)
    settings = Settings(model_dir=write_model(tmp_path / "m", ood=ood), log_dir=tmp_path)
    wide = np.full((40, 40, 3), (20, 20, 230), np.uint8)
    wide[10:30, 10:30] = (215, 28, 25)
    uploads = [
        ("files", ("red.png", png((215, 28, 25), (40, 40)))),
        ("files", ("wide.png", png_bytes(wide))),
        ("files", ("blue.png", png((20, 20, 230), (40, 40)))),
    ]
    with serve(create_app(settings)) as client:
        response = client.post("/predict", files=uploads)
        model = client.get("/model").json()
        metrics = client.get("/metrics").text
    assert response.status_code == 200, response.text
    red, wide_ood, blue = (p["ood"] for p in response.json()["predictions"])
    assert (red["flag"], red["misframed"]) == (False, False)
    assert (wide_ood["flag"], wide_ood["misframed"]) == (True, True)
    assert wide_ood["zoom_gain"] > ood["framing"]["threshold"] >= 0.0
    assert (blue["flag"], blue["misframed"]) == (True, False)  # far, but so is its centre
    assert abs(blue["zoom_gain"]) < 1e-3
    [path] = tmp_path.glob("*.jsonl")
    assert [r["ood"] for r in read_log(path)] == [red, wide_ood, blue]
    assert model["ood"]["framing"] == ood["framing"]
    assert 'ihcflow_ood_flagged_total{model_version="2.1.0"} 2.0' in metrics
    assert 'ihcflow_ood_misframed_total{model_version="2.1.0"} 1.0' in metrics


def test_a_model_json_without_ood_serves_without_it_and_says_so(tmp_path: Path) -> None:
    settings = Settings(model_dir=write_model(tmp_path / "m"), log_dir=tmp_path)
    with serve(create_app(settings)) as client:
        response = client.post("/predict", files=[("files", ("a.png", png((215, 28, 25))))])
        model = client.get("/model").json()
        ready = client.get("/readyz").json()
    assert response.status_code == 200 and response.json()["predictions"][0]["ood"] is None
    assert model["ood"]["available"] is False and "no 'ood' section" in model["ood"]["reason"]
    assert ready["ood"] is False
    [path] = tmp_path.glob("*.jsonl")
    assert "ood" not in read_log(path)[0]
    broken = write_model(tmp_path / "broken", ood={**colour_ood(), "method": "energy"})
    with pytest.raises(ModelLoadError, match="ood.method 'energy' unknown"):
        ServedModel.load(broken)


def test_unexpected_error_is_a_json_500_without_traceback(tmp_path: Path) -> None:
    from ihcflow.serving.model import read_servable

    def broken(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # a model that emits NaN
        return np.full((len(x), 3), np.nan, np.float32), np.zeros((len(x), 3), np.float32)

    folder = write_model(tmp_path / "m")
    model = ServedModel(read_servable(folder), broken)
    settings = Settings(model_dir=folder, log_dir=tmp_path / "logs")
    with serve(create_app(settings, model=model)) as client:
        response = client.post("/predict", files=[("files", ("a.png", png((1, 2, 3))))])
        metrics = client.get("/metrics").text
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "internal_error" and "Traceback" not in response.text
    assert body["request_id"] == response.headers["x-request-id"]
    assert (
        'ihcflow_http_requests_total{endpoint="/predict",method="POST",status="500"} 1.0' in metrics
    )
    assert not list((tmp_path / "logs").glob("*.jsonl"))  # nothing logged as a prediction
