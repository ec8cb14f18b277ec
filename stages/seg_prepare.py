"""Stage `seg_prepare`: check every raw nuclei image/mask pair and write the tiles in one form.

Reads ``nuclei/`` (images/ + masks/, optionally under train/ val/ test/; docs/segmentation.md);
writes ``processed/nuclei/`` (PNG images, 16-bit instance masks, classes.csv, tiles.csv) and
``reports/segmentation/prepare.json``. An unusable pair fails the stage, naming each file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ihcflow.errors import PipelineError
from ihcflow.files import write_json_atomic
from ihcflow.segmentation.prepare import prepare_tiles
from ihcflow.tables import NUCLEI_DIR


def run(*, data: Path, out: Path, report: Path) -> dict[str, Any]:
    """Check ``data`` and write ``out`` and ``report``; a failed check leaves neither."""
    report.unlink(missing_ok=True)
    result = prepare_tiles(data, out)
    write_json_atomic(report, result)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("nuclei"), help="raw nuclei folder")
    parser.add_argument("--out", type=Path, default=Path(NUCLEI_DIR))
    parser.add_argument("--report", type=Path, default=Path("reports/segmentation/prepare.json"))
    args = parser.parse_args(argv)
    try:
        result = run(data=args.data, out=args.out, report=args.report)
    except PipelineError as exc:
        raise SystemExit(f"seg_prepare: {exc}") from None
    print(
        f"seg_prepare: {result['tiles']} tiles, {result['nuclei']} nuclei "
        f"({result['positive']} of {result['classified']} classified ones positive); "
        f"wrote {args.out}"
    )


if __name__ == "__main__":
    main()
