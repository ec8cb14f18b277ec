"""Labelling without Label Studio: choosing a batch, the tasks file, votes and kappa, pulling an
export into data/. The model is a real ONNX graph (mean colour -> class: red neg, green pos,
blue mixed), the images real files; Label Studio's export is built in its JSON format."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss

from ihcflow.files import sha256_bytes, sha256_file
from ihcflow.labelling import pull as pull_mod
from ihcflow.labelling.model import load_model
from ihcflow.labelling.push import TASKS_JSON, push
from ihcflow.labelling.select import (
    MANIFEST_COLUMNS,
    SelectError,
    choose,
    folder_candidates,
    ood_scores,
    select_batch,
    uncertainty_table,
    upload_candidates,
)
from ihcflow.labelling.studio import StudioError, connection
from ihcflow.labelling.tasks import config_classes, data_url_bytes, label_config
from ihcflow.labelling.votes import Decision, Vote, agreement, cohen_kappa, fleiss_kappa
from tests.helpers.data import png
from tests.helpers.labelling import (
    BLUE,
    GREEN,
    RED,
    TILE,
    annotation,
    exported,
    labelled_project,
    put,
)
from tests.helpers.models import ONNX_CLASSES as CLASSES


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A registered model, data/ in layout 1 (neg 3, pos 1, mixed 1), a folder of new images."""
    labelled_project(tmp_path)
    new = tmp_path / "new"
    colours = {
        "a_unsure.png": (120, 110, 20),  # red ~ green: neg and pos close
        "b_red.png": (220, 20, 20),
        "c_green.png": (20, 220, 20),
        "d_green_unsure.png": (100, 125, 30),
        "e_blue.png": (40, 40, 250),
        "f_red_unsure.png": (130, 100, 30),
    }
    for name, colour in colours.items():
        put(new / name, png(colour, TILE))
    put(new / "sub/known.png", (tmp_path / "data/neg/n0.png").read_bytes())  # already in data/
    put(new / "sub/twice.png", (new / "b_red.png").read_bytes())  # same bytes twice
    put(new / "broken.png", b"\x89PNG\r\n\x1a\n not really")
    put(new / "notes.txt", b"not an image")
    return tmp_path


def run_select(ws: Path, out: Path, n: int = 4, **kw: Any):
    candidates, others = folder_candidates(ws / "new")
    return select_batch(
        candidates,
        load_model(ws / "models"),
        out,
        n=n,
        data_dir=ws / "data",
        root=ws,
        source="new",
        others=others,
        **kw,
    )


# ------------------------------------------------------------------------------------ select


def test_uncertainty_margin_and_entropy() -> None:
    probs = np.array([[0.5, 0.5, 0.0], [0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3]])
    table = uncertainty_table(probs, ["a", "b", "c"])
    assert table["predicted"].tolist() == ["a", "a", "a"]
    assert table["margin"].tolist() == pytest.approx([0.0, 0.85, 0.0])
    assert table["entropy"].tolist() == pytest.approx(
        [np.log(2) / np.log(3), -(0.9 * np.log(0.9) + 0.1 * np.log(0.05)) / np.log(3), 1.0]
    )
    assert table.loc[0, "runner_up"] == "b"


def test_ood_score_is_the_share_of_training_images_less_isolated() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 8)) + 5.0  # one cloud, away from the origin
    inside = reference[:3] + rng.normal(scale=0.01, size=(3, 8))
    outside = -reference[:2]  # the opposite direction
    scores = ood_scores(np.vstack([inside, outside]), reference)
    assert (scores[:3] < 0.2).all() and (scores[3:] == 1.0).all()


def test_class_balance_gives_rare_classes_more_places() -> None:
    scored = pd.DataFrame(
        {
            "predicted": ["a"] * 6 + ["b"] * 6,
            "score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4] + [0.3, 0.2, 0.1, 0.05, 0.04, 0.03],
        }
    )
    top = choose(scored, 4, balance=False, class_counts={"a": 10, "b": 10})
    assert top["predicted"].tolist() == ["a"] * 4
    even = choose(scored, 4, balance=True, class_counts={"a": 10, "b": 10})
    assert sorted(even["predicted"]) == ["a", "a", "b", "b"]
    rare_b = choose(scored, 6, balance=True, class_counts={"a": 30, "b": 10})
    # D'Hondt, weights 1/30 : 1/10: b b (a|b tie, a's better score first) b b b
    assert rare_b["predicted"].tolist() == ["b", "b", "a", "b", "b", "b"]
    # within a class the highest scores go first; a class without candidates leaves its places
    only_a = choose(scored[scored["predicted"] == "a"], 3, balance=True, class_counts={"b": 1})
    assert only_a["score"].tolist() == [0.9, 0.8, 0.7]


def test_select_writes_a_batch_and_says_why(workspace: Path) -> None:
    out = workspace / "labelling/b1"
    summary = run_select(workspace, out, n=4, balance=False)
    manifest = pd.read_csv(out / "manifest.csv")
    assert list(manifest.columns) == MANIFEST_COLUMNS
    # the most doubtful first: red ~ green
    assert manifest["source"].tolist()[:3] == [
        "a_unsure.png",
        "d_green_unsure.png",
        "f_red_unsure.png",
    ]
    assert manifest["margin"].is_monotonic_increasing
    for row in manifest.itertuples():  # copied unchanged, named by content
        copy = out / row.file
        assert sha256_file(copy) == row.sha256 == sha256_file(workspace / "new" / row.source)
        assert copy.name.startswith(row.sha256[:12])
        assert set(json.loads(row.probs)) == set(CLASSES)
    assert manifest.loc[0, "reason"].startswith("margin 0.")
    info = json.loads((out / "batch.json").read_text())
    assert info["model"]["version"] == "2.1.0" and info["counts"] == {
        "images": 9,
        "not_images": 1,
        "in_data": 1,
        "duplicate": 1,
        "unusable": 1,
        "chosen": 4,
    }
    reasons = {s["file"]: s["reason"] for s in info["skipped"]}
    assert reasons["sub/known.png"] == "already in data/ as neg/n0.png"
    assert reasons["sub/twice.png"] == "same bytes as b_red.png"
    assert "broken.png" in reasons["broken.png"]
    assert "no out-of-distribution score" in info["notes"][0]  # no pipeline outputs here
    assert "chose 4 of 9 image(s)" in summary.describe()

    # a second batch beside it never repeats an image; a batch folder is never reused
    second = run_select(workspace, workspace / "labelling/b2", n=10)
    assert not set(second.chosen["sha256"]) & set(manifest["sha256"])
    assert (
        json.loads((workspace / "labelling/b2/batch.json").read_text())["counts"][
            "in_earlier_batch"
        ]
        == 4
    )
    with pytest.raises(FileExistsError, match="never overwritten"):
        run_select(workspace, out)


def test_select_balances_by_class_counts_in_data(workspace: Path) -> None:
    summary = run_select(workspace, workspace / "b", n=3)
    # neg has 3 images in data/, pos and mixed 1: the first places go to pos and mixed
    assert summary.chosen["predicted"].tolist()[:2] in (["pos", "mixed"], ["mixed", "pos"])
    assert "class balance: " in summary.chosen.loc[0, "reason"]


def test_uploads_layout_is_checked(tmp_path: Path) -> None:
    good = png(RED, TILE)
    put(tmp_path / f"2026-05-01/{sha256_bytes(good)}.png", good)
    later = png(GREEN, TILE)
    put(tmp_path / f"2026-05-03/{sha256_bytes(later)}.png", later)
    put(tmp_path / f"2026-05-03/{'0' * 64}.png", png(BLUE, TILE))  # renamed or altered
    put(tmp_path / "2026-05-03/upload.png", png(BLUE, TILE))
    files, problems = upload_candidates(tmp_path)
    assert [f.sha256 for f in files] == [sha256_bytes(good), sha256_bytes(later)]
    assert files[0].source == f"2026-05-01/{sha256_bytes(good)}.png"
    assert {p["reason"][:14] for p in problems} == {"bytes hash to ", "not <sha256>.<"}
    import datetime as dt

    recent, _ = upload_candidates(tmp_path, since=dt.date(2026, 5, 2))
    assert [f.sha256 for f in recent] == [sha256_bytes(later)]
    with pytest.raises(SelectError, match="no day folders"):
        upload_candidates(tmp_path / "2026-05-01")


# -------------------------------------------------------------------------------------- push


def test_push_without_api_writes_the_import_file(workspace: Path) -> None:
    tiff = png((120, 100, 40), TILE, "TIFF")
    put(workspace / "new/g_scan.tif", tiff)
    out = workspace / "batch"
    run_select(workspace, out, n=10)
    result = push(out, None)
    tasks = json.loads((out / TASKS_JSON).read_text())
    manifest = pd.read_csv(out / "manifest.csv").set_index("sha256")
    assert result.n_tasks == len(tasks) == len(manifest)
    for task in tasks:
        row = manifest.loc[task["data"]["sha256"]]
        shown = data_url_bytes(task["data"]["image"])
        assert shown is not None
        if row["source"] == "g_scan.tif":  # browsers cannot show TIFF: a PNG rendition
            assert task["data"]["image"].startswith("data:image/png;") and shown[:4] == b"\x89PNG"
        else:
            assert sha256_bytes(shown) == task["data"]["sha256"]
        prediction = task["predictions"][0]
        assert prediction["model_version"] == "unit 2.1.0"
        assert prediction["result"][0]["value"]["choices"] == [row["predicted"]]
        assert prediction["score"] == pytest.approx(row["confidence"], abs=1e-6)
        assert task["data"]["batch"] == "batch"


def test_label_config_escapes_and_round_trips() -> None:
    classes = ["Er", 'A "quoted" <class> & co', "Ki-67"]
    config = label_config(classes, "model 1.0: <check>")
    assert config_classes(config) == classes
    with pytest.raises(ValueError, match="at least 2"):
        label_config(["only"], "t")


def test_connection_from_env_then_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    with pytest.raises(StudioError, match="LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY not set"):
        connection({}, dotenv)
    dotenv.write_text("LABEL_STUDIO_URL=http://ls.local:8080/\nLABEL_STUDIO_API_KEY='k1'\n")
    assert connection({}, dotenv) == ("http://ls.local:8080", "k1")
    env = {"LABEL_STUDIO_URL": "http://other:9", "LABEL_STUDIO_API_KEY": "k2"}
    assert connection(env, dotenv) == ("http://other:9", "k2")  # the environment wins
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", ".env"], cwd=tmp_path, check=True)
    with pytest.raises(StudioError, match="tracked by git"):
        connection({}, dotenv)


# ------------------------------------------------------------------------------------- votes


def test_majority_ties_and_disagreement() -> None:
    def decision(*labels: str) -> Decision:
        return Decision(1, tuple(Vote(f"u{i}", label, "t") for i, label in enumerate(labels)))

    assert decision("a", "a", "b").label == "a" and not decision("a", "a", "b").unanimous
    assert decision("a", "a", "b").agreement == pytest.approx(2 / 3)
    assert decision("a", "b").label is None
    assert decision("a").label == "a" and decision("a").unanimous


def test_kappas_match_sklearn_and_statsmodels() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, 60)
    raters = [np.where(rng.random(60) < 0.7, truth, rng.integers(0, 4, 60)) for _ in range(3)]
    a, b = [str(x) for x in raters[0]], [str(x) for x in raters[1]]
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    table = np.zeros((60, 4), dtype=int)
    for r in raters:
        table[np.arange(60), r] += 1
    items = [{str(j): int(table[i, j]) for j in range(4)} for i in range(60)]
    assert fleiss_kappa(items) == pytest.approx(statsmodels_fleiss(table))
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # chance agreement 1: undefined
    decisions = [
        Decision(i, tuple(Vote(f"r{k}", str(raters[k][i]), "t") for k in range(3)))
        for i in range(60)
    ]
    summary = agreement(decisions)
    assert summary["fleiss_kappa"] == pytest.approx(statsmodels_fleiss(table), abs=1e-4)
    pair = next(p for p in summary["cohen_kappa"] if p["annotators"] == ["r0", "r1"])
    assert pair["images"] == 60 and pair["kappa"] == pytest.approx(
        cohen_kappa_score(a, b), abs=1e-4
    )


# -------------------------------------------------------------------------------------- pull


@pytest.fixture
def export(workspace: Path) -> Callable[..., list[dict[str, Any]]]:
    """Label Studio's JSON export of a pushed batch, with the given annotations per task."""
    out = workspace / "labelling/b1"
    run_select(workspace, out, n=6, balance=False)
    push(out, None)
    tasks = json.loads((out / TASKS_JSON).read_text())

    return lambda *annotations: exported(tasks, *annotations)


def run_pull(ws: Path, tasks: list[dict[str, Any]], **kw: Any) -> pull_mod.PullResult:
    kw.setdefault("batches_dir", ws / "labelling")
    return pull_mod.pull(
        tasks,
        source="export.json",
        project="export.json",
        data_dir=ws / "data",
        names={1: "ann1@lab", 2: "ann2@lab", 3: "ann3@lab"},
        version=False,
        **kw,
    )


def test_pull_votes_writes_data_and_provenance(workspace: Path, export: Callable) -> None:
    tasks = export(
        [annotation(1, "neg"), annotation(2, "neg"), annotation(3, "pos")],  # 2:1 -> neg
        [annotation(1, "pos"), annotation(2, "mixed")],  # tie
        [annotation(1, None, cancelled=True), annotation(2, None, cancelled=True)],  # skipped
        [],  # nobody yet
        [
            annotation(1, "mixed", at="2026-05-01T09:00:00Z"),
            annotation(1, "pos", at="2026-05-01T11:00:00Z"),
        ],  # fmt: skip  (changed their mind)
        [annotation(2, "pos")],
    )
    before = {p: sha256_file(p) for p in (workspace / "data").rglob("*.png")}
    result = run_pull(workspace, tasks)
    statuses = {o.task_id: o.status for o in result.outcomes}
    assert statuses == {
        10: "accepted", 11: "tie", 12: "skipped", 13: "unannotated", 14: "accepted",
        15: "accepted",
    }  # fmt: skip
    assert result.added() == {"neg": 1, "pos": 2}
    for path, digest in before.items():  # nothing overwritten
        assert sha256_file(path) == digest
    table = pd.read_csv(workspace / "data/labelled.csv", dtype=str)
    assert list(table.columns) == pull_mod.PROVENANCE_COLUMNS and len(table) == 3
    first = table.set_index("task_id").loc["10"]
    assert first["annotators"] == "ann1@lab;ann2@lab;ann3@lab"
    assert first["votes"] == "neg 2, pos 1" and float(first["agreement"]) == pytest.approx(0.6667)
    assert first["path"].startswith("neg/label-") and first["model"] == "unit 2.1.0"
    assert first["reason_chosen"].startswith("margin ")
    written = workspace / "data" / first["path"]
    assert sha256_file(written) == first["sha256"]
    assert table.set_index("task_id").loc["14", "class"] == "pos"  # the annotator's latest
    summary = result.summary()
    assert [t["task_id"] for t in summary["ties"]] == [11]
    assert [t["task_id"] for t in summary["disagreements"]] == [10]
    text = result.describe()
    assert (
        "added to data/ (layout 1): neg 1, pos 2" in text and "task 11: tie: mixed 1, pos 1" in text
    )

    # the validator accepts the new data set: no duplicate, nothing rejected
    from ihcflow.validation import validate_dataset

    report = validate_dataset(workspace / "data", workers=1).report
    assert report["n_rejected"] == 0 and report["classes"] == {"mixed": 1, "neg": 4, "pos": 3}

    again = run_pull(workspace, tasks)  # pulling twice adds nothing
    assert again.added() == {} and {o.status for o in again.outcomes if o.task_id == 10} == {
        "already_pulled"
    }
    assert len(pd.read_csv(workspace / "data/labelled.csv")) == 3


def test_unknown_labels_are_refused_with_the_task_ids(workspace: Path, export: Callable) -> None:
    tasks = export([annotation(1, "neg")], [annotation(1, "Neg")], [annotation(2, "tumour")], [])
    with pytest.raises(pull_mod.LabelError) as exc:
        run_pull(workspace, tasks)
    assert "task 11: ann1@lab chose 'Neg'" in str(exc.value)
    assert "task 12: ann2@lab chose 'tumour'" in str(exc.value)
    assert not (workspace / "data/labelled.csv").exists()
    assert not list((workspace / "data").rglob("label-*"))


def test_duplicates_are_left_out(workspace: Path, export: Callable) -> None:
    tasks = export([annotation(1, "neg")], [annotation(1, "pos")])
    twin = dict(tasks[0], id=99)  # the same image imported twice
    known = tasks[1]["data"]["sha256"]
    put(workspace / "data/pos/already.png", data_url_bytes(tasks[1]["data"]["image"]) or b"")
    result = run_pull(workspace, [*tasks, twin])
    by_id = {o.task_id: o for o in result.outcomes}
    assert by_id[10].status == "accepted"
    assert by_id[99].status == "duplicate" and by_id[99].detail == "same image as task 10"
    assert (
        by_id[11].status == "duplicate" and "same bytes as data/pos/already.png" in by_id[11].detail
    )
    assert known == by_id[11].sha256


def test_layout_2_gets_train_unless_asked(workspace: Path, export: Callable) -> None:
    data = workspace / "data"
    for cls in ("neg", "pos", "mixed"):
        (data / cls).rename(workspace / cls)
        (data / "train").mkdir(exist_ok=True)
        (workspace / cls).rename(data / "train" / cls)
        put(
            data / "test" / cls / "t.png",
            png({"neg": RED, "pos": GREEN, "mixed": BLUE}[cls], TILE),
        )
    tasks = export([annotation(1, "neg")], [annotation(1, "pos")])
    result = run_pull(workspace, tasks[:1])
    assert result.layout == 2 and result.by_status("accepted")[0].path.startswith("train/neg/")
    with pytest.raises(ValueError, match="creating it would change"):
        run_pull(workspace, tasks[1:], split="val")
    asked = run_pull(workspace, tasks[1:], split="test")
    assert asked.by_status("accepted")[0].path.startswith("test/pos/")


def test_split_option_is_for_layout_2_only(workspace: Path, export: Callable) -> None:
    with pytest.raises(ValueError, match="layout 1"):
        run_pull(workspace, export([annotation(1, "neg")]), split="train")


def test_export_file_must_be_label_studio_json(tmp_path: Path) -> None:
    bad = put(tmp_path / "export.json", b'{"tasks": []}')
    with pytest.raises(ValueError, match="expected Label Studio's JSON export"):
        pull_mod.read_export(bad)


# ------------------------------------------------------------------------------ freeze-split


def test_freeze_split_keeps_the_split_as_layout_2(workspace: Path) -> None:
    from ihcflow.data.layout import discover
    from ihcflow.labelling.freeze import freeze_split

    data = workspace / "data"
    split = {"neg/n0.png": "train", "neg/n1.png": "val", "neg/n2.png": "test",
             "pos/p0.png": "train", "mixed/m0.png": "test"}  # fmt: skip
    rows = [
        {"path": p, "sha256": sha256_file(data / p), "class": p.split("/")[0], "split": s,
         "group": p, "image": f"processed/images/{sha256_file(data / p)}.png"}
        for p, s in split.items()
    ]  # fmt: skip
    table = workspace / "split.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    put(data / "groups.csv", b"path,group\nneg/n0.png,P1\nneg/n2.png,P2\n")
    put(data / "stray/x.png", png(RED, (5, 5)))
    with pytest.raises(ValueError, match=r"1 file\(s\) of .* are not in .*split.csv"):
        freeze_split(data, table)
    (data / "stray/x.png").unlink()
    (data / "stray").rmdir()
    put(data / "neg/n1.png", png((1, 2, 3), TILE))  # changed since the split
    with pytest.raises(ValueError, match="does not describe today's"):
        freeze_split(data, table)
    put(data / "neg/n1.png", png((201, 30, 30), TILE))
    pd.DataFrame(rows).assign(sha256=[sha256_file(data / p) for p in split]).to_csv(
        table, index=False
    )
    inodes = {p: (data / p).stat().st_ino for p in split}

    assert freeze_split(data, table) == {"train": 2, "val": 1, "test": 2}
    layout = discover(data)
    assert layout.kind == 2
    assert {(e.path, e.given_split) for e in layout.entries} == {
        (f"{s}/{p}", s) for p, s in split.items()
    }
    assert all((data / f"{s}/{p}").stat().st_ino == inodes[p] for p, s in split.items())
    groups = pd.read_csv(data / "groups.csv")
    assert groups["path"].tolist() == ["train/neg/n0.png", "test/neg/n2.png"]
    with pytest.raises(ValueError, match="already layout 2"):
        freeze_split(data, table)
