"""`make repro` in a fresh clone with a DVC remote: a real S3 server (moto) on 127.0.0.1.

The project runs the pipeline and `dvc push`es to the server (dvc-s3); a fresh `git clone` with
only the endpoint and credentials in `.dvc/config.local` runs `ihcflow data get`, what
`make repro` runs before `dvc repro`: the data, the checkpoints and the registered model come
from the remote, so `dvc repro` runs no stage and the metrics and model are the pushed ones.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml

from tests.helpers import BIN, fresh_clone, run_cmd
from tests.helpers.pipeline import DVC, IHCFLOW, STAGES, TINY_SAMPLE, ran_stages, sample_project

BUCKET = "ihcflow-remote"
KEY, SECRET = "ihcflow-test-key", "ihcflow-test-secret"  # moto accepts any pair
# what the clone must get from the remote, byte for byte
PULLED = ("models/model.onnx", "models/checkpoints/best.ckpt", "processed/split.csv")
GIT_TRACKED = ("reports/metrics.json", "models/model.json", "models/MODEL_CARD.md")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    """`moto_server` on 127.0.0.1 with an empty bucket; its URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "moto.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start: {(tmp_path / 'moto.log').read_text()}")
                time.sleep(0.2)
        _s3(url).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _s3(endpoint: str):  # a boto3 S3 client
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )


def configure_local(root: Path, endpoint: str) -> None:
    """What each user does once: endpoint and credentials in .dvc/config.local, never committed."""
    for option, value in (
        ("endpointurl", endpoint),
        ("access_key_id", KEY),
        ("secret_access_key", SECRET),
    ):
        run_cmd([DVC, "remote", "modify", "--local", "storage", option, value], root)


@pytest.mark.slow
def test_fresh_clone_pulls_data_checkpoints_and_model_then_repro_runs_nothing(
    project, s3_endpoint: str, tmp_path: Path
) -> None:
    root = sample_project(project, synth=TINY_SAMPLE, **{"train.epochs": 2})
    assert ran_stages(run_cmd([DVC, "repro"], root).stdout) == STAGES
    # the remote's URL is committed (.dvc/config); its endpoint and credentials are not
    run_cmd([DVC, "remote", "add", "-d", "storage", f"s3://{BUCKET}/cache"], root)
    configure_local(root, s3_endpoint)
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-qm", "repro, remote"], root)
    assert run_cmd(["git", "ls-files", ".dvc/config.local"], root).stdout == ""
    assert run_cmd(["git", "grep", "-l", SECRET], root, check=False).returncode == 1
    run_cmd([DVC, "push"], root)
    assert _s3(s3_endpoint).list_objects_v2(Bucket=BUCKET)["KeyCount"] > 0

    clone = fresh_clone(root, tmp_path / "clone")
    assert not (clone / "data").exists() and not (clone / "models/model.onnx").exists()
    configure_local(clone, s3_endpoint)
    out = run_cmd([IHCFLOW, "data", "get"], clone).stdout
    assert "pulled from the DVC remote" in out
    assert "pipeline outputs pulled" in out and "not on the remote" not in out

    assert run_cmd([DVC, "status"], clone).stdout.strip() == "Data and pipelines are up to date."
    assert ran_stages(run_cmd([DVC, "repro"], clone).stdout) == []
    for rel in PULLED + GIT_TRACKED:
        assert (clone / rel).read_bytes() == (root / rel).read_bytes(), rel
    report = [IHCFLOW, "report", "metrics"]
    assert run_cmd(report, clone).stdout == run_cmd(report, root).stdout

    # `make repro` again after local changes: a checkpoint not saved in the cache is kept (DVC
    # refuses to delete it), and the other stages' outputs are still restored
    (clone / "models/checkpoints/mine.ckpt").write_bytes(b"not saved in the cache")
    (clone / "models/model.onnx").unlink()
    out = run_cmd([IHCFLOW, "data", "get"], clone).stdout
    assert "left as they are: train (" in out and "mine.ckpt" in out
    assert (clone / "models/checkpoints/mine.ckpt").is_file()
    assert (clone / "models/model.onnx").read_bytes() == (root / "models/model.onnx").read_bytes()

    # A remote without the registered model's ONNX file: the rest is pulled, the gap is named,
    # and only `register` is left for `dvc repro`.
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    (onnx,) = [o for o in lock["stages"]["register"]["outs"] if o["path"] == "models/model.onnx"]
    _s3(s3_endpoint).delete_object(
        Bucket=BUCKET, Key=f"cache/files/md5/{onnx['md5'][:2]}/{onnx['md5'][2:]}"
    )
    partial = fresh_clone(root, tmp_path / "partial")
    configure_local(partial, s3_endpoint)
    out = run_cmd([IHCFLOW, "data", "get"], partial).stdout
    assert "not on the remote: models/model.onnx" in out
    assert (partial / "models/checkpoints/best.ckpt").is_file()
    status = run_cmd([DVC, "status"], partial).stdout.split()
    assert status == ["register:", "changed", "outs:", "not", "in", "cache:", "models/model.onnx"]
