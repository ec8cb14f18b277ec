"""The container and deployment files: Dockerfile (hadolint), .dockerignore, Kubernetes manifests
(schema-validated offline with kubernetes-validate) and the Compose file, checked against each
other: ports, probes, users, paths and selectors must agree."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ihcflow.prediction_log import log_path
from tests.helpers import REPO
from tests.helpers.docker import (
    build_context,
    dockerfile_instructions,
    dockerignore_rules,
    install_command,
    sent_to_docker,
    stages,
)

BIN = Path(sys.executable).parent
K8S = REPO / "deploy" / "k8s"
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())  # oldest supported, newest
YAMLLINT = "{extends: default, rules: {line-length: {max: 100}, document-start: disable}}"


# --- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    proc = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\n")
    proc = subprocess.run([str(BIN / "hadolint"), "--no-color", str(bad)], capture_output=True)
    assert proc.returncode != 0 and b"DL3007" in proc.stdout and b"DL3013" in proc.stdout


def test_dockerfile_builds_a_slim_non_root_image_without_torch() -> None:
    commands = " ".join(args for _, args in dockerfile_instructions())
    assert "torch" not in commands.replace("'torch' not in sys.modules", "")  # and it checks that
    builder, runtime = stages()
    assert builder[0][1].endswith("AS builder") and runtime[0][1].endswith("AS runtime")
    base = next(a for w, a in dockerfile_instructions() if w == "ARG" and "PYTHON_IMAGE" in a)
    # pinned by digest (a rebuild gets the same base), with the tag it came from
    pinned = re.fullmatch(r"PYTHON_IMAGE=(python:3\.11-slim(?:-\w+)?)@sha256:[0-9a-f]{64}", base)
    assert pinned, f"base image not pinned by digest: {base}"
    assert f"# {pinned.group(1)} (" in (REPO / "Dockerfile").read_text()  # which tag, and when
    # the install the tests reproduce: the pinned lock and the serve extra only
    assert install_command() == [
        "pip", "install", "--no-cache-dir", "-c", "requirements.lock", ".[serve]"
    ]  # fmt: skip
    runtime_words = dict(runtime)
    user = runtime_words["USER"].split(":")[0]
    assert user not in {"root", "0"} and int(user) >= 1000
    assert runtime_words["EXPOSE"] == "8000"
    assert "ihcflow.serving.healthcheck" in runtime_words["HEALTHCHECK"]
    assert "ihcflow.serving" in runtime_words["ENTRYPOINT"]
    copies = [a for w, a in runtime if w == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies
    assert "--from=builder /models /app/models" in copies
    assert "IHCFLOW_MODEL_DIR=/app/models" in runtime_words["ENV"]
    # the builder copies the registered model and checks that it loads
    assert any(w == "COPY" and "models/model.onnx models/model.json" in a for w, a in builder)
    assert ("RUN", "python -m ihcflow.serving --model-dir /models --check") in builder


def dockerfile_env(name: str) -> str:
    env = dict(stages()[-1])["ENV"]
    match = re.search(rf"\b{name}=(\S+)", env)
    assert match, f"{name} not set in the runtime stage"
    return match.group(1)


def dockerfile_uid() -> int:
    return int(dict(stages()[-1])["USER"].split(":")[0])


# --- .dockerignore -----------------------------------------------------------------------------


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    rules = dockerignore_rules()
    for rel in ("pyproject.toml", "requirements.lock", "README.md", "src/ihcflow/serving/app.py",
                "models/model.onnx", "models/model.json", "models/MODEL_CARD.md",
                "models/segmentation/model.onnx", "models/segmentation/model.json"):  # fmt: skip
        assert sent_to_docker(rel, rules), rel
    for rel in ("data/Er/P001_x.png", ".venv/bin/python", ".git/HEAD", "processed/split.csv",
                "models/checkpoints/best.ckpt", "models/segmentation/checkpoints/best.ckpt",
                "reports/metrics.json", "tests/conftest.py",
                "src/ihcflow/__pycache__/io.cpython-311.pyc", "src/ihcflow.egg-info/PKG-INFO",
                ".env", "logs/predictions/x.jsonl", "params.yaml"):  # fmt: skip
        assert not sent_to_docker(rel, rules), rel
    # every COPY source of the Dockerfile is in the context
    context = set(build_context())
    assert "src/ihcflow/serving/app.py" in context
    assert not any(p.startswith((".venv/", "data/", ".git/")) for p in context)
    for word, args in dockerfile_instructions():
        if word == "COPY" and not args.startswith("--from"):
            for src in args.split()[:-1]:
                if src.startswith("models/"):
                    assert sent_to_docker(src, rules), src  # made by `dvc repro`, maybe not yet
                else:
                    assert src in context or any(p.startswith(src + "/") for p in context), src


# --- Kubernetes --------------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    """kind -> resource, from the files kustomization.yaml lists (one resource per file)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = kustomization["resources"]
    assert sorted(files) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    out = {}
    for name in files:
        [doc] = list(yaml.safe_load_all((K8S / name).read_text()))
        out[doc["kind"]] = doc
    return out


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    found = manifests()
    assert set(found) == {"Deployment", "Service", "HorizontalPodAutoscaler",
                          "PersistentVolumeClaim", "PodDisruptionBudget", "CronJob"}  # fmt: skip
    for kind, doc in found.items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind} is not a valid Kubernetes {version} resource: {exc}")


def test_schema_validation_catches_a_typo() -> None:
    deployment = manifests()["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_manifests_agree_with_each_other_and_the_image() -> None:
    m = manifests()
    deployment, service, hpa = m["Deployment"], m["Service"], m["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert m["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert (
        hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    )

    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(dict(stages()[-1])["EXPOSE"])}
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["IHCFLOW_THREADS"] == str(limits["cpu"])  # inference threads fit the CPU limit

    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == dockerfile_uid()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    mounts = {v["name"]: v["mountPath"] for v in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert set(mounts) == set(volumes)
    claim = volumes["predictions"]["persistentVolumeClaim"]["claimName"]
    assert claim == m["PersistentVolumeClaim"]["metadata"]["name"]
    assert "ReadWriteMany" in m["PersistentVolumeClaim"]["spec"]["accessModes"]
    # each pod logs to its own folder on the shared volume
    assert env["IHCFLOW_LOG_DIR"] == f"{mounts['predictions']}/$(POD_NAME)"
    assert PurePosixPath(env["IHCFLOW_TOKEN_FILE"]).parent == PurePosixPath(mounts["token"])
    assert volumes["token"]["secret"]["secretName"]
    assert mounts["tmp"] == "/tmp" and "emptyDir" in volumes["tmp"]  # uploads spool there


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def test_the_autoscaler_alone_sets_the_replica_count() -> None:
    # `replicas` beside an HPA resets the count to it on every `kubectl apply`
    m = manifests()
    target = m["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
    assert m["Deployment"]["metadata"]["name"] == target
    assert "replicas" not in m["Deployment"]["spec"]


def test_the_image_is_a_registry_placeholder_set_by_kustomize() -> None:
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    images = {c["image"] for c in pod["containers"] + pod["initContainers"]}
    assert images == {"REGISTRY/ihcflow-serve:VERSION"}  # the init container: the same image
    [entry] = [i for i in kustomization()["images"] if i["name"] == "REGISTRY/ihcflow-serve"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", entry["newTag"])  # a model version, as container.yml


def test_the_log_volume_names_a_storage_class() -> None:
    claim = manifests()["PersistentVolumeClaim"]["spec"]
    assert claim["storageClassName"] and claim["accessModes"] == ["ReadWriteMany"]


def init_container() -> dict[str, Any]:
    [init] = manifests()["Deployment"]["spec"]["template"]["spec"]["initContainers"]
    return init


def test_an_init_container_gives_the_pods_log_folder_to_the_server_user() -> None:
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    [serve], init = pod["containers"], init_container()
    log_dirs = [
        e["value"] for c in (init, serve) for e in c["env"] if e["name"] == "IHCFLOW_LOG_DIR"
    ]
    assert log_dirs[0] == log_dirs[1]  # the very folder the server writes
    assert init["volumeMounts"] == [m for m in serve["volumeMounts"] if m["name"] == "predictions"]
    uid = dockerfile_uid()
    assert f'chown {uid}:{uid} "$IHCFLOW_LOG_DIR"' in init["command"][-1]
    # root, but with only the capabilities that chown and mkdir need
    security = init["securityContext"]
    assert security["runAsUser"] == 0 and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE"]}
    assert security["readOnlyRootFilesystem"] is True


SETPRIV = shutil.which("setpriv")


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv")
def test_the_init_containers_command_works_with_only_its_capabilities(tmp_path: Path) -> None:
    init = init_container()
    caps = ",".join(
        ["-all"] + [f"+{c.lower()}" for c in init["securityContext"]["capabilities"]["add"]]
    )
    volume = tmp_path / "predictions"  # a network volume's root, owned by another user
    volume.mkdir(mode=0o755)
    os.chown(volume, 65534, 65534)
    folder = volume / "ihcflow-serve-7c9d-x2kfp"
    for _ in range(2):  # a pod whose sandbox is recreated runs it again on its own folder
        proc = subprocess.run(
            [SETPRIV, f"--bounding-set={caps}", f"--inh-caps={caps}", *init["command"]],
            env={"PATH": os.environ["PATH"], "IHCFLOW_LOG_DIR": str(folder)},
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
    info = folder.stat()
    assert (info.st_uid, info.st_gid) == (dockerfile_uid(), dockerfile_uid())
    assert info.st_mode & 0o777 == 0o750


def test_the_log_shipper_copies_every_pods_logs_and_deletes_nothing() -> None:
    m = manifests()
    serve_pod = m["Deployment"]["spec"]["template"]["spec"]
    pod = m["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [shipper] = pod["containers"]
    claim = {v["name"]: v for v in pod["volumes"]}["predictions"]["persistentVolumeClaim"]
    assert claim == {"claimName": m["PersistentVolumeClaim"]["metadata"]["name"], "readOnly": True}
    [mount] = [v for v in shipper["volumeMounts"] if v["name"] == "predictions"]
    [serve_mount] = [
        v for v in serve_pod["containers"][0]["volumeMounts"] if v["name"] == mount["name"]
    ]
    assert mount["mountPath"] == serve_mount["mountPath"] and mount["readOnly"] is True
    command, source, dest, *flags = shipper["args"]
    assert command == "copy"  # `sync` would delete the store's copy of logs cleaned up here
    assert source == mount["mountPath"] and dest == "$(LOG_STORE)"
    # what a pod writes (<mount>/<pod>/predictions-<day>.jsonl) passes the filter, one level only
    [include] = [f.split("=", 1)[1] for f in flags if f.startswith("--include=")]
    written = log_path(PurePosixPath("ihcflow-serve-7c9d-x2kfp"), dt.date(2026, 5, 4))
    pattern = PurePosixPath(include.lstrip("/"))
    assert include.startswith("/") and len(pattern.parts) == 2 and written.match(str(pattern))
    # the server's user: its log folders are 0750 (init container)
    uid = dockerfile_uid()
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, uid)
    assert "0750" in init_container()["command"][-1]
    assert m["CronJob"]["spec"]["concurrencyPolicy"] == "Forbid"


def test_secrets_come_from_files_that_git_ignores() -> None:
    generated = {s["name"]: s for s in kustomization()["secretGenerator"]}
    m = manifests()
    volumes = {v["name"]: v for v in m["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["token"]["secret"]["secretName"] in generated
    pod = m["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [shipper] = pod["containers"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in shipper["env"] if "valueFrom" in e}
    refs |= {e["secretRef"]["name"] for e in shipper["envFrom"]}
    assert refs <= set(generated)
    files = [
        f.split("=")[-1] for s in generated.values() for f in s.get("files", []) + s.get("envs", [])
    ]
    assert files == ["secrets/token", "secrets/log-store.env"]
    for name in files:
        ignored = subprocess.run(["git", "check-ignore", "-q", f"deploy/k8s/{name}"], cwd=REPO)
        assert ignored.returncode == 0, f"deploy/k8s/{name} is not ignored by git"
    # the example of the env file is committed and has what the shipper reads from it
    example = K8S / "secrets" / "log-store.env.example"
    tracked = subprocess.run(["git", "check-ignore", "-q", str(example)], cwd=REPO)
    assert tracked.returncode == 1
    keys = {ln.split("=")[0] for ln in example.read_text().splitlines() if ln[:1].isalpha()}
    wanted = {e["valueFrom"]["secretKeyRef"]["key"] for e in shipper["env"] if "valueFrom" in e}
    assert wanted | {"RCLONE_CONFIG_STORE_TYPE"} <= keys


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) not installed")
def test_kustomize_builds_valid_resources_with_generated_secrets(tmp_path: Path) -> None:
    k8s = tmp_path / "k8s"
    shutil.copytree(K8S, k8s)
    # the preflight (docs/serving.md): the image, the two secret files
    config = kustomization()
    config["images"][0]["newName"] = "ghcr.io/acme-lab/ihcflow"
    (k8s / "kustomization.yaml").write_text(yaml.safe_dump(config))
    missing = subprocess.run([KUBECTL, "kustomize", str(k8s)], capture_output=True, text=True)
    assert missing.returncode != 0 and "secrets/token" in missing.stderr  # the preflight
    (k8s / "secrets" / "token").write_text("0123456789abcdef")
    shutil.copy(k8s / "secrets" / "log-store.env.example", k8s / "secrets" / "log-store.env")
    proc = subprocess.run([KUBECTL, "kustomize", str(k8s)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    built = {d["kind"] + "/" + d["metadata"]["name"]: d for d in yaml.safe_load_all(proc.stdout)}
    for name, doc in built.items():
        try:
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {exc}")
    secrets = sorted(n.split("/")[1] for n in built if n.startswith("Secret/"))
    assert [re.sub(r"-[a-z0-9]{10}$", "", s) for s in secrets] == [
        "ihcflow-log-store", "ihcflow-token"
    ]  # fmt: skip
    deployment = built["Deployment/ihcflow-serve"]
    text = yaml.safe_dump(deployment) + yaml.safe_dump(built["CronJob/ihcflow-log-shipper"])
    assert text.count(secrets[0]) == 2 and text.count(secrets[1]) == 1  # references follow
    assert "replicas" not in deployment["spec"]
    pod = deployment["spec"]["template"]["spec"]
    tag = config["images"][0]["newTag"]
    assert {c["image"] for c in pod["containers"] + pod["initContainers"]} == {
        f"ghcr.io/acme-lab/ihcflow:{tag}"
    }


# --- Compose -----------------------------------------------------------------------------------


def test_compose_file_runs_the_image_with_its_log_volume_and_secret() -> None:
    compose = yaml.safe_load((REPO / "deploy/compose.yaml").read_text())
    serve = compose["services"]["serve"]
    context = (REPO / "deploy" / serve["build"]["context"]).resolve()
    assert context == REPO and (context / serve["build"]["dockerfile"]).is_file()
    assert serve["ports"] == ["8000:8000"]
    [volume] = serve["volumes"]
    name, target = volume.split(":")
    assert name in compose["volumes"]
    assert PurePosixPath(target) in PurePosixPath(dockerfile_env("IHCFLOW_LOG_DIR")).parents
    [secret] = serve["secrets"]
    assert serve["environment"]["IHCFLOW_TOKEN_FILE"] == f"/run/secrets/{secret}"
    assert compose["secrets"][secret]["file"].startswith("./secrets/")
    assert serve["read_only"] is True and "/tmp" in serve["tmpfs"]
    assert serve["healthcheck"]["test"][-2:] == ["ihcflow.serving.healthcheck", "/readyz"]
    assert serve["environment"]["IHCFLOW_THREADS"] == str(serve["cpus"])


def test_deploy_yaml_passes_yamllint() -> None:
    proc = subprocess.run(
        [str(BIN / "yamllint"), "-f", "parsable", "-d", YAMLLINT, str(REPO / "deploy")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
