"""The segmentation stages end to end on a tiny generated sample (prepare -> split -> train ->
evaluate -> register), the gate, and ``POST /segment`` of the registered model on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ihcflow.config import section
from ihcflow.data.layout import DatasetError
from ihcflow.registry.gate import GateFailed
from ihcflow.segmentation.model_format import SegModel
from ihcflow.segmentation.params import (
    evaluate_params,
    gate_params,
    postprocess_params,
    split_params,
    tiling_params,
)
from ihcflow.segmentation.sample import generate
from ihcflow.split import SplitParams
from tests.helpers import BIN, compose, load_stage, run_cmd
from tests.helpers.data import png_bytes
from tests.helpers.models import SEG_TINY, write_model
from tests.helpers.server import Server, run_server

pytestmark = pytest.mark.slow

NO_GATE = (
    "segmentation.gate.min_dice=null",
    "segmentation.gate.min_aji=null",
    "segmentation.gate.min_pq=null",
    "segmentation.gate.min_f1=null",
    "segmentation.gate.max_ki67_error_mean=null",
)


def _run_pipeline(root: Path, *overrides: str) -> dict[str, Any]:
    params = compose([*SEG_TINY, "segmentation.split.val=0.25", "segmentation.split.test=0.25",
                      *overrides])  # fmt: skip
    seg = root / "processed" / "nuclei"
    report = load_stage("seg_prepare").run(
        data=root / "nuclei", out=seg, report=root / "prepare.json"
    )
    split = root / "split.csv"
    load_stage("seg_split").run(
        split_params(params),
        group_pattern=section(params, "split", SplitParams).group_pattern,
        seed=params.seed,
        tiles=seg / "tiles.csv",
        out=split,
    )
    ckpt = root / "ckpt" / "best.ckpt"
    load_stage("seg_train").run(
        params, split=split, tiles=seg, checkpoints=ckpt.parent, live=root / "live"
    )
    metrics = load_stage("seg_evaluate").run(
        evaluate_params(params),
        tiling=tiling_params(params),
        post=postprocess_params(params),
        checkpoint=ckpt,
        split=split,
        tiles=seg,
        metrics=root / "reports" / "metrics.json",
        per_image=root / "reports" / "per_image.csv",
        overlays=root / "reports" / "overlays",
    )

    def register() -> Any:
        return load_stage("seg_register").run(
            gate_params(params),
            tiling=tiling_params(params),
            checkpoint=ckpt,
            metrics=root / "reports" / "metrics.json",
            split=split,
            tiles=seg,
            train_summary=root / "live" / "summary.json",
            root=root,
            models=root / "models" / "segmentation",
        )

    return {"prepare": report, "metrics": metrics, "register": register}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("segpipe")
    generate(root / "nuclei", images=8, patients=4, size=96)
    out = _run_pipeline(root, *NO_GATE)
    out["registered"] = out["register"]()
    out["root"] = root
    return out


def test_stages_write_metrics_overlays_and_a_registered_model(pipeline: dict[str, Any]) -> None:
    root, metrics = pipeline["root"], pipeline["metrics"]
    assert pipeline["prepare"]["tiles"] == 8 and pipeline["prepare"]["nuclei"] > 0
    for key in ("dice", "iou", "aji", "pq", "f1", "ki67_error_mean", "ki67_error_max"):
        assert key in metrics
    assert metrics["n_images"] == 2 and metrics["tuned_on_val"] is True
    assert len(list((root / "reports" / "overlays").glob("*.png"))) == 2
    models = root / "models" / "segmentation"
    info = json.loads((models / "model.json").read_text())
    assert info["task"] == "segmentation" and info["version"] == "1.0.0"
    assert info["postprocess"] == metrics["postprocess"]  # the thresholds evaluation scored
    assert len(set(info["onnx"]["sizes"])) == 2 and info["onnx"]["max_abs_diff"] <= 1e-4
    card = (models / "MODEL_CARD.md").read_text()
    assert "Ki-67" in card and "## Registration gate" in card
    # registering the same weights again keeps the version
    again = pipeline["register"]()
    assert again.info["version"] == "1.0.0"


def test_the_gate_refuses_a_weak_model_and_keeps_the_registered_one(
    pipeline: dict[str, Any], tmp_path: Path
) -> None:
    root = pipeline["root"]
    before = (root / "models" / "segmentation" / "model.json").read_text()
    params_fail = ("segmentation.gate.min_aji=0.999",)
    with pytest.raises(GateFailed) as failed:
        load_stage("seg_register").run(
            gate_params(compose([*SEG_TINY, *params_fail])),
            tiling=tiling_params(compose(list(SEG_TINY))),
            checkpoint=root / "ckpt" / "best.ckpt",
            metrics=root / "reports" / "metrics.json",
            split=root / "split.csv",
            tiles=root / "processed" / "nuclei",
            train_summary=root / "live" / "summary.json",
            root=root,
            models=root / "models" / "segmentation",
        )
    assert "aji" in failed.value.result.report() and "FAIL" in failed.value.result.report()
    assert (root / "models" / "segmentation" / "model.json").read_text() == before


def test_prepare_names_a_mask_that_does_not_fit_its_image(tmp_path: Path) -> None:
    generate(tmp_path / "nuclei", images=2, patients=1, size=64)
    mask = next((tmp_path / "nuclei" / "masks").iterdir())
    cv2.imwrite(str(mask), np.zeros((10, 10), np.uint16))
    with pytest.raises(DatasetError, match=rf"{mask.name}: size_mismatch"):
        load_stage("seg_prepare").run(
            data=tmp_path / "nuclei", out=tmp_path / "out", report=tmp_path / "r.json"
        )
    assert not (tmp_path / "out").exists()


# --- POST /segment ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(pipeline: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("segserve")
    classifier = write_model(work / "classifier")
    token = work / "token"
    token.write_text("s3cret\n")
    env = {
        "IHCFLOW_SEGMENTATION_MODEL_DIR": str(pipeline["root"] / "models" / "segmentation"),
        "IHCFLOW_TOKEN_FILE": str(token),
        "IHCFLOW_MAX_PIXELS": "1000000",
    }
    with run_server(classifier, work / "run", env) as srv:
        yield srv


AUTH = {"Authorization": "Bearer s3cret"}


def _tile(root: Path) -> tuple[str, bytes, np.ndarray]:
    path = sorted((root / "nuclei" / "images").iterdir())[0]
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    big = np.concatenate([image, image[:, ::-1], image], axis=1)  # 96 x 288: several windows
    return path.name, png_bytes(big), big


def test_segment_answers_counts_and_the_instance_mask(
    pipeline: dict[str, Any], server: Server
) -> None:
    name, data, image = _tile(pipeline["root"])
    with server.client(headers=AUTH) as client:
        r = client.post("/segment", files=[("files", (name, data))])
        raw = client.post(
            "/segment", content=data, headers={"Content-Type": "image/png", "Accept": "image/png"}
        )
    assert r.status_code == 200, r.text
    body = r.json()
    mask = cv2.imdecode(np.frombuffer(base64.b64decode(body["mask_png_base64"]), np.uint8), -1)
    assert mask.dtype == np.uint16 and mask.shape == image.shape[:2]
    assert body["count"] == int(mask.max()) == len(np.unique(mask)) - 1
    assert (body["width"], body["height"]) == (288, 96)
    if body["count"]:
        assert body["ki67_index"] == pytest.approx(body["positive"] / body["count"], abs=1e-6)
        assert body["mean_area_px"] == pytest.approx((mask > 0).sum() / body["count"], rel=1e-3)
    # the same image through the registered model in-process gives the same nuclei
    direct = SegModel.load(pipeline["root"] / "models" / "segmentation").segment(image)
    assert direct.annotation.count == body["count"]
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
    assert raw.headers["x-nuclei-count"] == str(body["count"])
    png_mask = cv2.imdecode(np.frombuffer(raw.content, np.uint8), -1)
    assert np.array_equal(png_mask, mask)


def test_segment_has_the_predict_auth_limits_and_errors(
    pipeline: dict[str, Any], server: Server
) -> None:
    _, data, _ = _tile(pipeline["root"])
    huge = io.BytesIO()
    huge.write(png_bytes(np.full((1100, 1000, 3), 200, np.uint8)))
    with server.client() as client:
        assert client.post("/segment", files=[("files", ("a.png", data))]).status_code == 401
        client.headers.update(AUTH)
        bad = client.post("/segment", files=[("files", ("a.txt", b"not an image"))])
        assert bad.status_code == 415 and bad.json()["error"] == "not_an_image"
        assert bad.json()["file"] == "a.txt"
        big = client.post("/segment", files=[("files", ("big.png", huge.getvalue()))])
        assert big.status_code == 413 and big.json()["error"] == "too_large"
        two = client.post(
            "/segment", files=[("files", ("a.png", data)), ("files", ("b.png", data))]
        )
        assert two.status_code == 413
        text = client.get("/metrics").text
    time.sleep(0.2)
    served = {
        s.labels["status"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "ihcflow_http_requests_total" and s.labels.get("endpoint") == "/segment"
    }
    assert {"401", "415", "413"} <= served
    access = [r for r in server.logs() if r["logger"] == "ihcflow.serving.access"]
    assert any(r["path"] == "/segment" and r["error"] == "not_an_image" for r in access)


def test_import_nuclei_copies_and_versions_a_masks_folder(tmp_path: Path) -> None:
    generate(tmp_path / "src", images=3, patients=1, size=64)
    project = tmp_path / "project"
    project.mkdir()
    run_cmd(["git", "init", "-q"], project)
    run_cmd([str(BIN / "dvc"), "init", "-q"], project)
    out = run_cmd(
        [str(BIN / "ihcflow"), "data", "import-nuclei", str(tmp_path / "src")], project
    ).stdout
    assert "imported 3 images with masks" in out
    meta = yaml.safe_load((project / "nuclei.dvc").read_text())["meta"]
    assert meta["source"] == "ihcflow data import" and meta["imported"]["images"] == 3
    assert sorted(p.name for p in (project / "nuclei" / "masks").iterdir()) == sorted(
        p.name for p in (tmp_path / "src" / "masks").iterdir()
    )
