"""data.dvc's meta as the report and `ihcflow data get` describe it."""

from __future__ import annotations

import pytest

from ihcflow.data.provenance import IMPORT_SOURCE, SAMPLE_SOURCE, describe, parse_dvc_file

OUTS = [{"md5": "abc.dir", "nfiles": 3, "path": "data"}]
IMPORTED = {"name": "bloodmnist.npz", "kind": "npz", "images": 17092, "at": "2026-12-01T10:00:00Z"}


def test_the_sample_is_named_only_while_the_hash_is_the_one_it_was_recorded_with() -> None:
    sample = {"outs": OUTS, "meta": {"source": SAMPLE_SOURCE, "md5": "abc.dir", "args": {}}}
    assert describe(sample).startswith("the built-in synthetic sample")
    legacy = {"outs": OUTS, "meta": {"source": SAMPLE_SOURCE, "args": {}}}  # no md5 yet
    assert describe(legacy).startswith("the built-in synthetic sample")
    edited = {"outs": OUTS, "meta": {"source": SAMPLE_SOURCE, "md5": "old.dir", "args": {}}}
    assert describe(edited).startswith("data changed since it was the built-in synthetic sample")


def test_an_import_is_named_with_its_source() -> None:
    meta = {"source": IMPORT_SOURCE, "md5": "abc.dir", "imported": IMPORTED}
    assert describe({"outs": OUTS, "meta": meta}) == (
        "data imported from `bloodmnist.npz` (npz, 17092 images) at 2026-12-01T10:00:00Z "
        "(`data.dvc` meta.source: ihcflow data import)"
    )
    changed = {"outs": OUTS, "meta": {**meta, "md5": "old.dir"}}
    assert describe(changed).startswith("data changed since it was data imported from")


def test_other_or_no_meta_is_not_called_the_sample() -> None:
    assert describe({"outs": OUTS}) == "data of unrecorded origin (`data.dvc` has no meta.source)"
    assert describe({"outs": OUTS, "meta": {"source": "lab export"}}).startswith(
        "data from lab export"
    )


def test_a_file_that_is_not_a_dvc_file_is_named() -> None:
    with pytest.raises(ValueError, match=r"data\.dvc: not a DVC file"):
        parse_dvc_file("just: text\n", "data.dvc")
    with pytest.raises(ValueError, match=r"data\.dvc: not valid YAML"):
        parse_dvc_file("outs: [\n", "data.dvc")
