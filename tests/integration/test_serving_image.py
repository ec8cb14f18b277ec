"""What the Docker image does, without a Docker engine: the builder's exact `pip install` into a
fresh venv from the build context that .dockerignore lets through, then the image's commands
(import check, model check, server, health check) run from that venv. Needs PyPI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO
from tests.helpers.data import png
from tests.helpers.docker import build_context, install_command
from tests.helpers.models import write_model
from tests.helpers.server import run_server

TRAINING_STACK = {"torch", "pytorch-lightning", "lightning", "dvc", "hydra-core", "scikit-learn"}


@pytest.mark.slow
def test_the_image_install_serves_the_model_without_torch(tmp_path: Path) -> None:
    context = tmp_path / "context"
    for rel in build_context(REPO):
        if not rel.startswith("models/"):  # a registered model may not exist here: use ours
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, context / rel)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip, *args = install_command()
    assert pip == "pip"
    install = subprocess.run(
        [str(venv / "bin" / "pip"), *args], cwd=context, capture_output=True, text=True, timeout=900
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    python = str(venv / "bin" / "python")

    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
    ).stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert {"ihcflow", "onnxruntime", "fastapi", "uvicorn"} <= installed
    assert not installed & TRAINING_STACK

    # the builder's checks, then the server as the entry point starts it
    subprocess.run(
        [python, "-c", "import sys, ihcflow.serving.app; assert 'torch' not in sys.modules"],
        cwd=tmp_path,
        check=True,
        timeout=120,
    )
    models = write_model(tmp_path / "models")
    check = subprocess.run(
        [python, "-m", "ihcflow.serving", "--model-dir", str(models), "--check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0 and "unit 2.1.0: 3 classes" in check.stdout, check.stderr
    with run_server(models, tmp_path / "run", {}, python=python) as server:
        response = httpx.post(
            f"{server.url}/predict", files=[("files", ("red.png", png((220, 30, 30))))], timeout=30
        )
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["predicted"] == "neg"
        health = subprocess.run(
            [python, "-m", "ihcflow.serving.healthcheck"],
            env={"IHCFLOW_PORT": str(server.port)},
            capture_output=True,
            timeout=60,
        )
        assert health.returncode == 0
