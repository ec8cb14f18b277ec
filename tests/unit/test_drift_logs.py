"""Reading prediction logs (bad lines, other model versions, time ranges), windows, the
simulated shifts."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ihcflow.data.synth import render_image
from ihcflow.images.features import FEATURE_COLUMNS, image_features
from ihcflow.monitoring.drift import DriftParams, compare, compare_windows, window_bounds
from ihcflow.monitoring.simulate import log_record, scale_brightness, scale_stain
from ihcflow.monitoring.sources import (
    DriftInputError,
    Table,
    is_log_source,
    parse_since,
    read_logs,
)
from ihcflow.prediction_log import PredictionLog
from tests.helpers import write_logs
from tests.helpers.data import draw

T0 = dt.datetime(2026, 5, 4, 8, 0, tzinfo=dt.UTC)  # a Monday
FEATURES = dict.fromkeys(FEATURE_COLUMNS, 0.5)


def records(n: int, start: dt.datetime = T0, step_h: float = 1.0, **kw: object) -> list[dict]:
    return [
        log_record(start + dt.timedelta(hours=i * step_h), FEATURES, "Er", **kw)  # type: ignore[arg-type]
        for i in range(n)
    ]


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def test_reads_day_files_in_the_server_format(tmp_path: Path) -> None:
    rows = records(30, step_h=2.0, embedding=[0.1, 0.2, 0.3])
    files = write_logs(tmp_path, rows)
    assert [p.name for p in files] == [
        "predictions-2026-05-04.jsonl",
        "predictions-2026-05-05.jsonl",
        "predictions-2026-05-06.jsonl",
    ]
    table = read_logs(tmp_path)
    assert len(table) == 30 and table.kind == "logs" and is_log_source(tmp_path)
    assert table.frame["ts"].min() == ts("2026-05-04T08:00") and table.frame["ts"].dt.tz
    assert table.frame[FEATURE_COLUMNS].to_numpy().tolist() == [[0.5] * len(FEATURE_COLUMNS)] * 30
    assert table.embeddings is not None and table.embeddings.shape == (30, 3)
    assert table.counts["model"] == "ihc-classifier 1.0.0"
    assert table.counts["bad_lines"] == table.counts["other_version_rows"] == 0


def test_reads_one_sub_folder_per_pod_as_the_server_writes_them(tmp_path: Path) -> None:
    # deploy/k8s: every pod logs to <volume>/<pod name>/ (IHCFLOW_LOG_DIR=...$(POD_NAME))
    pods = {"ihcflow-serve-7c9d-x2kfp": "Er", "ihcflow-serve-7c9d-q8mzt": "Pr"}
    for i, (pod, predicted) in enumerate(pods.items()):
        log = PredictionLog(tmp_path / pod)  # the server's own writer
        log.write(
            log_record(T0 + dt.timedelta(hours=i + 4 * k), FEATURES, predicted) for k in range(12)
        )
        log.close()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jsonl")) == [
        f"{pod}/predictions-2026-05-0{day}.jsonl" for pod in sorted(pods) for day in (4, 5, 6)
    ]
    assert is_log_source(tmp_path)
    table = read_logs(tmp_path)
    assert table.counts["files"] == 6 and table.counts["bad_lines"] == 0
    assert table.frame["predicted"].value_counts().to_dict() == {"Er": 12, "Pr": 12}
    # the top folder's own files are read beside the pods' (a single server, docker compose)
    write_logs(tmp_path, records(3, start=T0 + dt.timedelta(days=1)))
    assert len(read_logs(tmp_path)) == 27


def test_bad_lines_are_left_out_counted_and_named(tmp_path: Path) -> None:
    [path] = write_logs(tmp_path, records(5))
    broken = dict(records(1)[0])
    del broken["features"]
    half = dict(records(1)[0], features={**FEATURES, "dab_mean": "n/a"})
    with path.open("a") as fh:
        fh.write("[1, 2]\n")  # JSON, but not a record
        fh.write(json.dumps(broken) + "\n")
        fh.write(json.dumps(half) + "\n")
        fh.write(json.dumps(dict(records(1)[0], ts="yesterday")) + "\n")
        fh.write(json.dumps(records(1)[0])[:40])  # the server crashed mid-line
    table = read_logs(tmp_path)
    assert len(table) == 5
    assert table.counts["bad_lines"] == 4 and table.counts["incomplete_rows"] == 1
    problems = "\n".join(table.problems)
    for text in (
        f"{path}:6: not a JSON object",
        f"{path}:7: lacks features",
        f"{path}:10: not valid JSON (a truncated line?)",
        f"{path}:9: ts 'yesterday' is not an ISO 8601 time",
        f"{path}:8: missing or non-numeric features ['dab_mean']",
    ):
        assert text in problems


def test_other_model_versions_are_excluded_or_refused(tmp_path: Path) -> None:
    write_logs(tmp_path, records(20, model_version="1.0.0"))
    write_logs(tmp_path, records(8, start=T0 + dt.timedelta(days=1), model_version="1.0.1"))
    newest = read_logs(tmp_path)  # default: the version of the newest record
    assert len(newest) == 8 and newest.counts["model"] == "ihc-classifier 1.0.1"
    assert newest.counts["other_versions"] == {"ihc-classifier 1.0.0": 20}
    pinned = read_logs(tmp_path, model_version="1.0.0", model_name="ihc-classifier")
    assert len(pinned) == 20 and pinned.counts["other_version_rows"] == 8
    with pytest.raises(DriftInputError, match=r"8 record\(s\) from other model versions"):
        read_logs(tmp_path, model_version="1.0.0", strict_version=True)
    with pytest.raises(DriftInputError, match="no complete records of model other 1.0.0"):
        read_logs(tmp_path, model_version="1.0.0", model_name="other")


def test_since_and_until_select_the_time_range(tmp_path: Path) -> None:
    write_logs(tmp_path, records(96))  # 4 days, hourly
    table = read_logs(tmp_path, since=ts("2026-05-05T08:00"), until=ts("2026-05-06T08:00"))
    assert len(table) == 24
    # the day files more than a day away are not even opened; the rest is filtered by ts
    assert (table.counts["files"], table.counts["files_read"]) == (5, 4)
    assert table.counts["outside_time_range"] == 64
    with pytest.raises(DriftInputError, match=r"no usable prediction records in \[2026-06-01"):
        read_logs(tmp_path, since=ts("2026-06-01"))


def test_missing_folder_and_empty_folder_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DriftInputError, match="prediction log folder not found"):
        read_logs(tmp_path / "nope")
    with pytest.raises(DriftInputError, match=r"no prediction logs \(predictions-\*\.jsonl\)"):
        read_logs(tmp_path)
    assert not is_log_source(tmp_path)
    # logs two levels down are not the per-pod layout: not read
    write_logs(tmp_path / "pods" / "pod-a", records(3))
    assert not is_log_source(tmp_path)


def test_embeddings_are_dropped_with_a_note_when_some_records_lack_them(tmp_path: Path) -> None:
    write_logs(tmp_path, records(4, embedding=[1.0, 2.0]) + records(2, start=T0 + dt.timedelta(1)))
    table = read_logs(tmp_path)
    assert table.embeddings is None
    assert table.notes == [
        "embeddings not compared: 2 of 6 records have none (embedding logging disabled?)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", "2026-05-03T12:00"),
        ("36h", "2026-05-09T00:00"),
        ("2w", "2026-04-26T12:00"),
        ("2026-05-01", "2026-05-01T00:00"),
        ("2026-05-01T06:00+02:00", "2026-05-01T04:00"),
    ],
)
def test_since_accepts_durations_and_iso_times(text: str, expected: str) -> None:
    assert parse_since(text, ts("2026-05-10T12:00")) == ts(expected)


def test_since_rejects_nonsense() -> None:
    with pytest.raises(DriftInputError, match=r"--since \(expected e.g. 7d"):
        parse_since("last week", ts("2026-05-10"))


def test_window_bounds_cover_whole_days_and_iso_weeks() -> None:
    days = window_bounds("day", ts("2026-05-04T08:00"), ts("2026-05-06T01:00"))
    assert [(a.isoformat()[:10], b.isoformat()[:10]) for a, b in days] == [
        ("2026-05-04", "2026-05-05"),
        ("2026-05-05", "2026-05-06"),
        ("2026-05-06", "2026-05-07"),
    ]
    weeks = window_bounds("week", ts("2026-05-07T08:00"), ts("2026-05-12T01:00"))
    assert [a.day_name() for a, _ in weeks] == ["Monday", "Monday"]
    assert [a.isoformat()[:10] for a, _ in weeks] == ["2026-05-04", "2026-05-11"]
    with pytest.raises(ValueError, match="window must be one of"):
        window_bounds("month", ts("2026-05-07"), ts("2026-05-08"))


def test_windows_mark_empty_and_small_days_and_find_the_shifted_one() -> None:
    reference, same = draw(3, 60)
    _, shifted = draw(4, 60, lambda x: scale_brightness(x, 0.85))
    frame = pd.concat([same.frame, shifted.frame], ignore_index=True)
    times = [T0] * 40 + [T0 + dt.timedelta(days=1)] * 20 + [T0 + dt.timedelta(days=3)] * 60
    frame["ts"] = pd.to_datetime(times, utc=True)
    current = Table(frame, None, "logs", "logs")
    windows = compare_windows(reference, current, DriftParams(), "day", since=ts("2026-05-03"))
    summary = [
        (w.start.isoformat()[:10], w.comparison.n_current, w.comparison.status) for w in windows
    ]
    assert summary == [
        ("2026-05-03", 0, "not_enough_data"),
        ("2026-05-04", 40, "no_drift"),
        ("2026-05-05", 20, "not_enough_data"),
        ("2026-05-06", 0, "not_enough_data"),
        ("2026-05-07", 60, "drift"),
    ]
    assert "brightness" in windows[-1].comparison.drifted_columns
    with pytest.raises(DriftInputError, match="--window needs prediction logs"):
        compare_windows(reference, same, DriftParams(), "day")


def test_simulated_stain_batch_changes_that_stain_only() -> None:
    rgb = render_image("Er", 3, size=96)
    assert np.abs(scale_stain(rgb, "dab", 1.0).astype(int) - rgb).max() <= 1
    before, after = image_features(rgb, 96), image_features(scale_stain(rgb, "dab", 1.5), 96)
    assert after["dab_mean"] == pytest.approx(1.5 * before["dab_mean"], rel=0.1)
    assert after["hematoxylin_mean"] == pytest.approx(before["hematoxylin_mean"], rel=0.1)
    darker = image_features(scale_brightness(rgb, 0.8), 96)
    assert darker["brightness"] < before["brightness"] - 0.05
    with pytest.raises(ValueError, match="stain 'silver' unknown"):
        scale_stain(rgb, "silver", 2.0)


def test_the_servers_ood_flags_are_summarised_per_window(tmp_path: Path) -> None:
    midnight = T0.replace(hour=0)
    rows = records(72, start=midnight)  # three UTC days of 24
    for i, rec in enumerate(rows):
        day = i // 24
        rec["ood"] = {"score": 1.0 + i, "flag": i % 24 < (0, 3, 12)[day]}  # 0%, 12.5%, 50%
        if day == 2:  # a model with the framing check: 4 of the 12 flagged are misframed
            rec["ood"].update(zoom_gain=0.5, misframed=i % 24 < 4)
    rows += records(5, start=midnight + dt.timedelta(days=1))  # a server without OOD scoring
    write_logs(tmp_path, rows)
    current = read_logs(tmp_path)
    assert current.frame["ood_flag"].isna().sum() == 5
    reference, _ = draw(0, 30)
    windows = compare_windows(reference, current, DriftParams(min_rows=20), "day")
    assert [w.to_dict()["ood_flagged_share"] for w in windows] == [0.0, 3 / 24, 0.5]
    assert [w.comparison.ood_scored for w in windows] == [24, 24, 24]
    overall = compare(reference, current, DriftParams())
    assert overall.to_dict()["ood"] == {
        "scored": 72,
        "flagged": 15,
        "share": 15 / 72,
        "misframed": 4,
    }
    assert current.frame["ood_misframed"].notna().sum() == 24
