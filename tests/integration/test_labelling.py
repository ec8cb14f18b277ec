"""The labelling loop against a real Label Studio (the venv `make labelstudio` creates), driven
over HTTP: `ihcflow label select` -> `push` -> people sign up and label in Label Studio ->
`pull` into data/ (DVC). Skipped, with the reason, when Label Studio is not installed.

The model here is a small real ONNX graph (mean colour -> class); the whole loop on the sample
with training and the gate is `test_the_loop_on_the_sample_retrains_and_compares`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from sklearn.metrics import cohen_kappa_score

from ihcflow.files import sha256_file
from ihcflow.images.codec import encode_png, read_rgb8
from ihcflow.monitoring.simulate import scale_brightness
from tests.helpers import run_cmd
from tests.helpers.data import png
from tests.helpers.labelling import TILE, labelled_project, put
from tests.helpers.labelstudio import (
    SKIP_REASON,
    Labeller,
    LabelStudio,
    installed,
    running,
    screenshot,
)
from tests.helpers.pipeline import DVC, IHCFLOW, experiments, overrides, sample_project

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not installed(), reason=SKIP_REASON)]


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    with running(tmp_path_factory.mktemp("label-studio")) as server:
        yield server


def dotenv(root: Path, url: str, key: str) -> None:
    """Where and as whom, the way a user keeps it: a git-ignored .env in the project."""
    (root / ".env").write_text(f"LABEL_STUDIO_URL={url}\nLABEL_STUDIO_API_KEY={key}\n")


@pytest.fixture
def workspace(project, studio: LabelStudio) -> Path:
    """A git + DVC project with a registered model (classes neg, pos, mixed), data/ (layout 1,
    `dvc add`ed and committed) and a folder of new images; .env points at Label Studio."""
    root = labelled_project(project())
    run_cmd([DVC, "add", "-q", "data"], root)
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-qm", "data"], root)
    for i, colour in enumerate([(120, 110, 20), (100, 125, 30), (130, 100, 30), (40, 40, 250)]):
        put(root / f"new/scan_{i}.png", png(colour, TILE))
    put(root / "new/scan_4.jpg", png((90, 140, 60), TILE, "JPEG"))
    dotenv(root, studio.url, studio.token)
    return root


def label(root: Path, *args: str) -> str:
    return run_cmd([IHCFLOW, "label", *args], root).stdout


def test_push_label_pull_through_label_studio(
    workspace: Path, studio: LabelStudio, tmp_path: Path
) -> None:
    root = workspace
    assert "chose 5 of 5 image(s)" in label(
        root, "select", "new", "-n", "5", "--out", "labelling/b1"
    )
    untracked = run_cmd(["git", "status", "--porcelain"], root).stdout
    assert untracked == "?? new/\n"  # .env (the key) and labelling/ (patient images) are ignored

    out = label(root, "push", "labelling/b1", "--annotators", "3")
    assert "created project" in out and "imported 5 task(s)" in out
    pushed = json.loads((root / "labelling/b1/push.json").read_text())
    project, task_of = pushed["project"], pushed["tasks"]
    manifest = pd.read_csv(root / "labelling/b1/manifest.csv")
    with studio.admin() as admin:
        info = admin.get(f"/api/projects/{project}").json()
        tasks = admin.get("/api/tasks", params={"project": project}).json()["tasks"]
    assert info["title"] == "ihcflow unit" and info["maximum_annotations"] == 3
    assert '<Choice value="mixed"/>' in info["label_config"]
    assert len(tasks) == 5 and all(t["total_predictions"] == 1 for t in tasks)
    again = label(root, "push", "labelling/b1")
    assert "reused project" in again and "5 already there" in again

    # three people sign up in the browser and label; one task stays untouched
    people = [Labeller(studio.url, f"path{i}@lab.invalid", f"pw-{i}-long-enough") for i in range(3)]
    t = [task_of[sha] for sha in manifest["sha256"]]
    plan = {  # task -> each person's choice (None: Skip)
        t[0]: ["neg", "neg", "neg"],
        t[1]: ["pos", "pos", "neg"],  # majority pos, a disagreement
        t[2]: ["pos", "mixed", None],  # a tie
        t[3]: [None, None, None],  # everyone skipped
    }
    for task_id, choices in plan.items():
        for person, choice in zip(people, choices, strict=True):
            person.annotate(task_id, choice, skip=choice is None)
    export_file = tmp_path / "export.json"  # what a user downloads from the Export button
    with studio.admin() as admin:
        export = admin.get(f"/api/projects/{project}/export", params={"exportType": "JSON"})
    export_file.write_bytes(export.content)

    # pull through the API with a personal access token (a JWT, refreshed by the client)
    dotenv(root, studio.url, studio.personal_access_token())
    data_md5 = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    out = label(root, "pull", "--batch", "labelling/b1")
    assert (
        f"{studio.url} project {project}: 5 task(s): 2 accepted, 1 skipped, 1 tie, 1 unannotated"
        in out
    )
    table = pd.read_csv(root / "data/labelled.csv", dtype=str).set_index("task_id")
    assert table.loc[str(t[0]), "class"] == "neg" and table.loc[str(t[1]), "class"] == "pos"
    assert table.loc[str(t[1]), "votes"] == "neg 1, pos 2"
    assert (
        table.loc[str(t[1]), "annotators"]
        == "path0@lab.invalid;path1@lab.invalid;path2@lab.invalid"
    )
    for _, row in table.iterrows():
        assert sha256_file(root / "data" / row["path"]) == row["sha256"]
        assert row["path"].startswith(f"{row['class']}/label-")
    report = json.loads((root / "labelling/b1/pull.json").read_text())
    assert [x["task_id"] for x in report["ties"]] == [t[2]]
    assert [x["task_id"] for x in report["disagreements"]] == [t[1]]
    pairs = {tuple(p["annotators"]): p for p in report["agreement"]["cohen_kappa"]}
    a = [plan[k][0] for k in (t[0], t[1])]
    b = [plan[k][2] for k in (t[0], t[1])]
    expected = cohen_kappa_score(a, b)
    assert pairs[("path0@lab.invalid", "path2@lab.invalid")]["kappa"] == pytest.approx(expected)

    # DVC versions the new data
    assert yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"] != data_md5
    assert "data.dvc" in run_cmd(["git", "status", "--porcelain"], root).stdout
    assert run_cmd([DVC, "status", "data.dvc"], root).stdout.strip().endswith("up to date.")
    # the export file (annotated tasks only) gives the same decisions; pulling again adds nothing
    repeat = label(root, "pull", "--export", str(export_file), "--no-dvc")
    assert "4 task(s): 2 already pulled, 1 skipped, 1 tie" in repeat
    for person in people:
        person.close()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium not installed")
def test_the_labelling_page_shows_the_model_guess(
    workspace: Path, studio: LabelStudio, tmp_path: Path
) -> None:
    label(workspace, "select", "new", "-n", "1", "--no-balance", "--out", "labelling/one")
    label(workspace, "push", "labelling/one", "--title", "screenshot check")
    pushed = json.loads((workspace / "labelling/one/push.json").read_text())
    [task_id] = pushed["tasks"].values()
    guess = pd.read_csv(workspace / "labelling/one/manifest.csv")["predicted"][0]
    person = Labeller(studio.url, "viewer@lab.invalid", "viewer-password-1")
    checked = "[...document.querySelectorAll('.ant-checkbox-wrapper-checked')]"
    shot = screenshot(
        f"{studio.url}/projects/{pushed['project']}/data?task={task_id}",
        person.cookies,
        tmp_path / "task.png",
        # the page is ready when the model's class is the pre-selected choice
        ready=f"{checked}.map(e => e.textContent).join('|').startsWith({json.dumps(guess)})",
        size=(1400, 1150),
        timeout=300,
    )
    pixels, _ = read_rgb8(shot)
    assert pixels.shape[:2] == (1150, 1400) and pixels.std() > 20
    person.close()
    with httpx.Client(base_url=studio.url, timeout=60) as anonymous:  # nothing without login
        assert anonymous.get(f"/api/tasks/{task_id}").status_code == 401


def test_the_loop_on_the_sample_retrains_and_compares(project, studio: LabelStudio) -> None:
    """select -> push -> label -> pull -> `dvc exp run` (the gate) -> compare, on the sample."""
    epochs = {"train.epochs": 3}
    root = sample_project(project, **epochs)
    run_cmd([DVC, "repro", "split"], root)
    frozen = label(root, "freeze-split")  # the test set stays what it is now (layout 2)
    assert "is layout 2 now, as processed/split.csv split it: train 200, val 50, test 50" in frozen
    test_before = pd.read_csv(root / "processed/split.csv").query("split == 'test'")
    run_cmd([DVC, "repro"], root)
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-qm", "model 1.0.0"], root)
    before = json.loads((root / "models/model.json").read_text())
    metrics_before = json.loads((root / "reports/metrics.json").read_text())

    # a new scanner, 20 % darker: images the model has not seen, their classes known here
    run_cmd([IHCFLOW, "data", "synth", "--out", "new", "--per-class", "8", "--patients", "2",
             "--seed", "2027"], root)  # fmt: skip
    for path in sorted((root / "new").rglob("*.png")):
        path.write_bytes(encode_png(scale_brightness(read_rgb8(path)[0], 0.8)))
    dotenv(root, studio.url, studio.token)
    selected = label(root, "select", "new", "-n", "20", "--out", "labelling/scanner-2")
    assert "out-of-distribution score against the" in selected  # the training embeddings
    label(root, "push", "labelling/scanner-2", "--annotators", "2", "--title", "loop")
    pushed = json.loads((root / "labelling/scanner-2/push.json").read_text())
    manifest = pd.read_csv(root / "labelling/scanner-2/manifest.csv")
    pathologists = [Labeller(studio.url, f"dr{i}@lab.invalid", f"pw-dr{i}-long") for i in (1, 2)]
    for row in manifest.itertuples():
        truth = row.source.split("/")[0]  # new/<class>/<file>: what a pathologist would say
        for person in pathologists:
            person.annotate(pushed["tasks"][row.sha256], truth)
    pulled = label(root, "pull", "--batch", "labelling/scanner-2")
    assert "20 task(s): 20 accepted" in pulled and "Fleiss' kappa 1.000" in pulled
    run_cmd(["git", "add", "data.dvc"], root)
    run_cmd(["git", "commit", "-qm", "data: scanner-2 labelled"], root)

    # retrain: the whole pipeline reruns on the grown data; the gate decides on registration
    exp = run_cmd([DVC, "exp", "run", "-n", "with-scanner-2", *overrides(**epochs)], root)
    assert "Running stage 'register'" in exp.stdout
    after = json.loads((root / "models/model.json").read_text())
    assert (before["version"], after["version"]) == ("1.0.0", "1.0.1")
    validation = json.loads((root / "reports/data/validation.json").read_text())
    assert validation["n_rejected"] == 0 and validation["n_valid"] == 320  # 300 + 20 labelled
    assert "with-scanner-2" in experiments(root)

    # the same test split before and after: the labelled images went to train
    test_after = pd.read_csv(root / "processed/split.csv").query("split == 'test'")
    assert sorted(test_after["sha256"]) == sorted(test_before["sha256"])
    metrics_after = json.loads((root / "reports/metrics.json").read_text())
    assert metrics_after["n_test"] == metrics_before["n_test"] == 50
    compared = label(root, "compare", "--base", "HEAD", "--json", "compare.json")
    print(compared)
    result = json.loads((root / "compare.json").read_text())
    assert result["base"]["model"] == "ihc-classifier 1.0.0"
    assert result["new"]["model"] == "ihc-classifier 1.0.1"
    assert result["images"] == result["test_images"] == 50
    for side, metrics in (("base", metrics_before), ("new", metrics_after)):
        # re-evaluated from the raw files, each model as the server prepares them: what the
        # evaluate stage measured on the preprocessed images
        assert result["metrics"][side]["accuracy"] == pytest.approx(metrics["accuracy"], abs=0.03)
    assert "50 of the 50 test image(s) are unseen by both models" in compared
    assert "metric" in run_cmd([IHCFLOW, "report", "metrics", "--against", "HEAD"], root).stdout
    for person in pathologists:
        person.close()
