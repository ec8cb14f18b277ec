"""The real server (``python -m ihcflow.serving`` on a free loopback port) with a model that the
pipeline's own stages trained, evaluated and registered from raw images, queried over HTTP."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from ihcflow.config import typed
from ihcflow.images.features import ACQUISITION_COLUMNS, FEATURE_COLUMNS
from ihcflow.prediction_log import read_log
from ihcflow.preprocess import PreprocessParams
from ihcflow.split import SplitParams
from ihcflow.tables import FEATURES, read_table
from ihcflow.validation import ValidateParams
from tests.helpers import conf_section, load_stage
from tests.helpers.data import CLASSES, COLOURS, SIZE, png_bytes
from tests.helpers.models import PASSING, TinyPredictor, evaluate_tiny, register_tiny, train_tiny
from tests.helpers.server import Server, free_port, run_server, server_env

TOKEN = "s3cr3t-test-token-0123456789"
LIMITS = {"IHCFLOW_MAX_BYTES": "256K", "IHCFLOW_MAX_PIXELS": "1000000", "IHCFLOW_MAX_FILES": "4"}
FORMATS = ("png", "jpg", "tif")
LOG_FIELDS = {"ts", "request_id", "model_name", "model_version", "filename", "predicted", "probs",
              "features", "acquisition", "latency_ms"}  # fmt: skip


# --- a registered model made by the pipeline's stages from raw images ------------------------


def write_raw_images(data: Path, per_class: int = 20, seed: int = 0) -> None:
    """Raw uploads as a lab would have them: mixed formats and sizes, some too dark."""
    rng = np.random.default_rng(seed)
    for k, (cls, colour) in enumerate(COLOURS.items()):
        (data / cls).mkdir(parents=True)
        for j in range(per_class):
            h, w = (int(v) for v in rng.integers(28, 64, size=2))
            base = np.array(colour, float) + rng.normal(0, 20, size=3)
            pixels = base + rng.normal(0, 10, size=(h, w, 3))
            if j % 4 == 0:
                pixels *= 0.45  # under-exposed: auto_correct stretches it
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            fmt = FORMATS[(j + k) % 3]  # each patient: all three formats
            options = {"quality": 92} if fmt == "jpg" else {}
            image.save(data / cls / f"P{j:02d}_{cls}.{fmt}", **options)


def build_registered_model(root: Path) -> dict[str, Any]:
    """validate -> preprocess -> split -> (tiny) train -> evaluate -> register, as the stages do."""
    data = root / "data"
    write_raw_images(data)
    manifest = root / "processed/manifest.csv"
    features = root / "reports/data/features.csv"
    images = root / "processed/images"
    load_stage("validate").run(
        typed(conf_section("validate"), ValidateParams, "validate"),
        data=data,
        manifest=manifest,
        report=root / "reports/data/validation.json",
        workers=1,
    )
    preprocess = {**conf_section("preprocess"), "size": SIZE, "workers": 1, "cache_dir": None}
    load_stage("preprocess").run(
        PreprocessParams.from_section(preprocess),
        data=data,
        manifest=manifest,
        images=images,
        features=features,
        report=root / "reports/data/preprocess.json",
    )
    load_stage("split").run(
        typed(conf_section("split"), SplitParams, "split"),
        seed=42,
        manifest=manifest,
        features=features,
        data=data,
        images=images.relative_to(root),
        out=root / "processed/split.csv",
        report=root / "reports/data/split.json",
    )

    predictor = TinyPredictor(train_tiny(root))
    predictor.config["preprocess"] = preprocess  # what the train stage records
    ev = evaluate_tiny(root, predictor)
    gate = {**PASSING, "min_balanced_accuracy": 0.0, "min_auroc_macro": None,
            "min_class_recall": None}  # fmt: skip
    return register_tiny(ev, gate)


# --- the server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("project")
    info = build_registered_model(root)
    return {"root": root, "info": info}


@pytest.fixture(scope="module")
def server(project: dict[str, Any]) -> Iterator[Server]:
    with run_server(project["root"] / "models", project["root"] / "open", LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def secured(project: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    token_file = tmp_path_factory.mktemp("secret") / "token"
    token_file.write_text(TOKEN + "\n")
    env = {"IHCFLOW_TOKEN_FILE": str(token_file), "IHCFLOW_LOG_EMBEDDING": "0"}
    with run_server(project["root"] / "models", project["root"] / "secured", env) as running:
        yield running


def metric(text: str, name: str, /, **labels: str) -> float:
    """The sum of the samples ``name`` with these labels in a Prometheus exposition."""
    return sum(
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (name, data)) for name, data in items]


# --- predictions -----------------------------------------------------------------------------


def test_predictions_match_the_evaluate_stage(project: dict[str, Any], server: Server) -> None:
    root = project["root"]
    expected = pd.read_csv(root / "reports/predictions.csv")
    assert len(expected) >= 6 and set(expected["path"].str.rsplit(".", n=1).str[1]) == set(FORMATS)
    prob_cols = [f"prob_{c}" for c in CLASSES]
    with server.client() as client:
        for _, row in expected.iterrows():
            raw = (root / "data" / row["path"]).read_bytes()
            response = client.post("/predict", files=files((Path(row["path"]).name, raw)))
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model_name"] == "tiny"
            assert body["model_version"] == project["info"]["version"] == "1.0.0"
            assert body["latency_ms"] > 0
            assert response.headers["x-request-id"] == body["request_id"]
            [pred] = body["predictions"]
            assert pred["filename"] == Path(row["path"]).name
            assert pred["predicted"] == row["predicted"], row["path"]
            assert list(pred["probs"]) == CLASSES
            np.testing.assert_allclose(
                [pred["probs"][c] for c in CLASSES], row[prob_cols].to_numpy(float), atol=1e-4
            )

        # all test images in one request: one batch through the model, same answers, in order
        batch = [(Path(p).name, (root / "data" / p).read_bytes()) for p in expected["path"][:4]]
        response = client.post("/predict", files=files(*batch))
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        assert [p["filename"] for p in got] == [name for name, _ in batch]
        assert [p["predicted"] for p in got] == expected["predicted"][:4].tolist()
        np.testing.assert_allclose(
            [[p["probs"][c] for c in CLASSES] for p in got],
            expected[prob_cols][:4].to_numpy(float),
            atol=1e-4,
        )

        # the raw image as the body
        first = expected.iloc[0]
        response = client.post(
            "/predict",
            content=(root / "data" / first["path"]).read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 200, response.text
        [pred] = response.json()["predictions"]
        assert pred["filename"] is None and pred["predicted"] == first["predicted"]


def test_every_prediction_is_logged_with_the_drift_features(
    project: dict[str, Any], server: Server
) -> None:
    root = project["root"]
    reference = read_table(root / "reports/data/features.csv", FEATURES).set_index("path")
    paths = reference.index[:3].tolist()
    with server.client() as client:
        response = client.post(
            "/predict",
            files=files(*[(Path(p).name, (root / "data" / p).read_bytes()) for p in paths]),
            headers={"X-Request-ID": "lab-42.batch-7"},
        )
    assert response.status_code == 200, response.text
    assert response.json()["request_id"] == "lab-42.batch-7"
    [log_file] = server.log_dir.glob("predictions-*.jsonl")
    assert log_file.name == f"predictions-{time.strftime('%Y-%m-%d', time.gmtime())}.jsonl"
    records = [r for r in read_log(log_file) if r["request_id"] == "lab-42.batch-7"]
    assert len(records) == 3  # written before the response was sent
    for record, path, answer in zip(records, paths, response.json()["predictions"], strict=True):
        assert set(record) == LOG_FIELDS | {"embedding"}
        assert record["ts"].endswith("Z") and record["model_version"] == "1.0.0"
        assert record["filename"] == Path(path).name
        assert record["predicted"] == answer["predicted"] and record["probs"] == answer["probs"]
        assert list(record["features"]) == FEATURE_COLUMNS
        # exactly the numbers the preprocess stage wrote to features.csv for this raw file:
        # one analysis size, full precision on both sides
        row = reference.loc[path]
        assert [record["features"][c] for c in FEATURE_COLUMNS] == [
            float(row[c]) for c in FEATURE_COLUMNS
        ]
        assert list(record["acquisition"]) == ACQUISITION_COLUMNS
        assert [str(record["acquisition"][c]) for c in ACQUISITION_COLUMNS] == [
            row[c] for c in ACQUISITION_COLUMNS
        ]
        assert len(record["embedding"]) == 3 and "image_b64" not in record


def test_concurrent_requests_are_all_answered_and_logged(server: Server) -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(12)]

    def send(i: int) -> httpx.Response:
        with server.client() as client:
            return client.post(
                "/predict",
                files=files((f"c{i}.png", png_bytes(images[i]))),
                headers={"X-Request-ID": f"concurrent-{i}"},
            )

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(send, range(12)))
    assert [r.status_code for r in responses] == [200] * 12
    logged = [r for f in server.log_dir.glob("*.jsonl") for r in read_log(f)]
    ids = [r["request_id"] for r in logged if r["request_id"].startswith("concurrent-")]
    assert sorted(ids) == sorted(f"concurrent-{i}" for i in range(12))


# --- bad input -------------------------------------------------------------------------------


def _truncated_png() -> bytes:
    data = png_bytes(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return data[: len(data) // 2]


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buf, format="GIF")
    return buf.getvalue()


def _big_png() -> bytes:  # 300 KB of noise: over the 256 KiB file limit
    return png_bytes(np.random.default_rng(3).integers(0, 255, (330, 330, 3), dtype=np.uint8))


def _many_pixels() -> bytes:  # 1200 x 1200 = 1.44 MP > 1 MP, yet a small file (uniform)
    return png_bytes(np.full((1200, 1200, 3), 180, np.uint8))


def _transparent_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (64, 64), (120, 40, 90, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _sized(width: int, height: int) -> bytes:
    return png_bytes(np.full((height, width, 3), 128, np.uint8))


SMALL = png_bytes(np.full((20, 20, 3), 128, np.uint8))
BAD_UPLOADS = {
    "not an image": (files(("notes.txt", b"patient 12, slide 3\n")), 415, "not_an_image"),
    "corrupt": (files(("cut.png", _truncated_png())), 422, "corrupt"),
    "empty file": (files(("empty.png", b"")), 400, "empty"),
    "unsupported format": (files(("anim.gif", _gif())), 415, "unsupported_format"),
    "too many bytes": (files(("big.png", _big_png())), 413, "too_large"),
    "too many pixels": (files(("huge.png", _many_pixels())), 413, "too_large"),
    "too many files": (files(*[(f"{i}.png", SMALL) for i in range(5)]), 413, "too_many_files"),
    "1x1": (files(("dot.png", _sized(1, 1))), 422, "too_small"),
    "3x3": (files(("speck.png", _sized(3, 3))), 422, "too_small"),
    "10000x1": (files(("line.png", _sized(10_000, 1))), 422, "too_small"),
    "fully transparent": (files(("clear.png", _transparent_png())), 422, "no_content"),
    "one bad file among good ones": (
        files(("ok.png", SMALL), ("cut.png", _truncated_png())),
        422,
        "corrupt",
    ),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_get_a_clear_4xx(server: Server, case: str) -> None:
    upload, status, code = BAD_UPLOADS[case]
    with server.client() as client:
        response = client.post("/predict", files=upload)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    name = upload[-1][1][0] if code not in ("too_many_files",) else None
    assert body["file"] == name
    if name:
        assert name in body["detail"]  # the message names the file
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    if case == "too many pixels":
        assert "1200x1200" in body["detail"] and "1000000" in body["detail"]
    if code == "too_small":
        assert "minimum of 16 px" in body["detail"]


def test_long_file_names_get_a_clear_answer(server: Server) -> None:
    with server.client() as client:
        ok = client.post("/predict", files=files(("a" * 3000 + ".png", SMALL)))
        long = client.post("/predict", files=files(("b" * 4200 + ".png", SMALL)))
    assert ok.status_code == 200, ok.text
    assert ok.json()["predictions"][0]["filename"] == "a" * 3000 + ".png"
    assert (long.status_code, long.json()["error"]) == (400, "header_too_long")
    assert "file name too long" in long.json()["detail"]


def test_malformed_multipart_is_answered_and_logged_as_json(server: Server) -> None:
    body = b"--xyQ\r\nContent-Disposition: form-data; name=files; filename=a.png\r\n\r\nab"
    with server.client() as client:
        bad = client.post(
            "/predict",
            content=body + b"\r\n--xyz--\r\n",
            headers={"Content-Type": "multipart/form-data; boundary=xyz", "X-Request-ID": "mp-1"},
        )
    assert (bad.status_code, bad.json()["error"]) == (400, "bad_multipart")
    assert "Expected boundary character" in bad.json()["detail"]  # the parser's own reason
    time.sleep(0.2)
    lines = server.logs()  # json.loads of every line: a plain-text line fails here
    assert [r["error"] for r in lines if r.get("request_id") == "mp-1"] == ["bad_multipart"]


# --- auth, health, metrics, logs -------------------------------------------------------------


def test_bearer_token_guards_predict_only(project: dict[str, Any], secured: Server) -> None:
    raw = next((project["root"] / "data").rglob("*.png")).read_bytes()
    with secured.client() as client:
        missing = client.post("/predict", files=files(("a.png", raw)))
        wrong = client.post(
            "/predict", files=files(("a.png", raw)), headers={"Authorization": "Bearer nope"}
        )
        ok = client.post(
            "/predict", files=files(("a.png", raw)), headers={"Authorization": f"Bearer {TOKEN}"}
        )
        model = client.get("/model")
        open_paths = {p: client.get(p).status_code for p in ("/healthz", "/readyz", "/metrics")}
    assert (missing.status_code, missing.json()["error"]) == (401, "unauthorized")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401 and "wrong bearer token" in wrong.json()["detail"]
    assert ok.status_code == 200, ok.text
    assert model.status_code == 401
    assert open_paths == {"/healthz": 200, "/readyz": 200, "/metrics": 200}
    [record] = [r for f in secured.log_dir.glob("*.jsonl") for r in read_log(f)]
    assert "embedding" not in record  # IHCFLOW_LOG_EMBEDDING=0
    assert TOKEN not in secured.stderr.read_text()  # no secret in the server's logs


def test_health_readiness_model_and_docs(server: Server) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz").json()
        model = client.get("/model").json()
        docs = client.get("/docs")
        spec = client.get("/openapi.json").json()
    assert ready == {
        "status": "ready",
        "model_name": "tiny",
        "model_version": "1.0.0",
        "ood": False,
    }
    # 60 raw images leave too few validation images to calibrate an OOD threshold: said so
    assert model["ood"]["available"] is False and "no 'ood' section" in model["ood"]["reason"]
    assert model["class_names"] == CLASSES and model["input_size"] == SIZE
    assert "balanced_accuracy" in model["metrics"]
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/png", "image/jpeg", "image/tiff"} <= set(body)
    assert "413" in spec["paths"]["/predict"]["post"]["responses"]


def test_metrics_count_requests_predictions_and_rejections(server: Server) -> None:
    with server.client() as client:
        before = client.get("/metrics").text
        ok = client.post("/predict", files=files(("m.png", SMALL)))
        bad = client.post("/predict", files=files(("m.txt", b"not an image")))
        after = client.get("/metrics").text
    assert ok.status_code == 200 and bad.status_code == 415
    predicted = ok.json()["predictions"][0]["predicted"]

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("ihcflow_http_requests_total", endpoint="/predict", status="200") == 1
    assert delta("ihcflow_http_requests_total", endpoint="/predict", status="415") == 1
    assert delta("ihcflow_http_requests_total", endpoint="/metrics", status="200") == 1
    assert delta("ihcflow_http_request_duration_seconds_count", endpoint="/predict") == 2
    assert delta("ihcflow_predictions_total", model_version="1.0.0", **{"class": predicted}) == 1
    assert delta("ihcflow_rejected_images_total", reason="not_an_image") == 1
    assert delta("ihcflow_inference_duration_seconds_count") == 1
    assert metric(after, "ihcflow_model_info", name="tiny", version="1.0.0") == 1
    assert metric(after, "ihcflow_model_ready") == 1
    assert metric(after, "process_cpu_seconds_total") > 0  # the paper's "system load"
    assert metric(after, "ihcflow_process_memory_bytes") > 10e6
    assert metric(after, "ihcflow_system_load1") >= 0


def test_request_logs_are_structured_json(server: Server) -> None:
    with server.client() as client:
        client.post("/predict", files=files(("s.png", SMALL)), headers={"X-Request-ID": "log-1"})
        client.post("/predict", files=files(("s.txt", b"nope")), headers={"X-Request-ID": "log-2"})
    time.sleep(0.2)
    lines = server.logs()  # every line is JSON (json.loads would raise otherwise)
    access = {r["request_id"]: r for r in lines if r["logger"] == "ihcflow.serving.access"}
    assert access["log-1"]["status"] == 200 and access["log-1"]["images"] == 1
    assert access["log-1"]["path"] == "/predict" and access["log-1"]["duration_ms"] > 0
    assert access["log-2"]["status"] == 415 and access["log-2"]["error"] == "not_an_image"
    assert any(r["message"] == "model loaded" and r["model_version"] == "1.0.0" for r in lines)


def test_container_healthcheck_command(server: Server) -> None:
    def healthcheck(port: int) -> subprocess.CompletedProcess[str]:
        env = server_env({"IHCFLOW_PORT": str(port)})
        return subprocess.run(
            [sys.executable, "-m", "ihcflow.serving.healthcheck"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert healthcheck(server.port).returncode == 0
    down = healthcheck(free_port())
    assert down.returncode == 1 and "refused" in down.stderr.lower()


def test_cli_refuses_an_empty_token_unless_no_auth(project: dict[str, Any], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ihcflow.serving", "--model-dir", str(project["root"] / "models"),
         "--check"],
        env=server_env({"IHCFLOW_TOKEN": ""}),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "IHCFLOW_TOKEN is set but empty" in proc.stderr
    env = {"IHCFLOW_TOKEN": "", "IHCFLOW_NO_AUTH": "1"}
    with run_server(project["root"] / "models", tmp_path / "open", env) as running:
        with running.client() as client:
            ok = client.post("/predict", files=files(("a.png", SMALL)))
        assert ok.status_code == 200, ok.text
        assert any(r.get("auth") is False for r in running.logs())


def test_cli_refuses_to_start_without_a_model(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ihcflow.serving", "--model-dir", str(tmp_path / "none")],
        env=server_env({}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "no registered model" in proc.stderr and "none/model.json" in proc.stderr
