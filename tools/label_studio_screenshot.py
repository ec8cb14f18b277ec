"""The picture in docs/labelling.md: a Label Studio task with the model's guess pre-selected.

Runs the documented commands on new images (the built-in sample generator with another seed,
20 % darker, as from a new scanner): `ihcflow label select`, `ihcflow label push` into a
Label Studio started from .venv-labelstudio (`make labelstudio`) on 127.0.0.1, then a labeller
logs in and headless Chromium captures the most doubtful task.

    python tools/label_studio_screenshot.py --root . --out docs/img/labelling-task.png

``--root``: a project after `make repro` (its models/, data/, processed/ and reports/ are used
read-only: the registered model, the known images, the training embeddings).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.labelstudio import Labeller, installed, running, screenshot  # noqa: E402


def ihcflow(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "ihcflow.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"ihcflow {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=REPO, help="a project after make repro")
    parser.add_argument("--out", type=Path, default=REPO / "docs/img/labelling-task.png")
    args = parser.parse_args()
    if not installed():
        raise SystemExit("Label Studio is not installed: `make labelstudio`")
    from ihcflow.images.codec import encode_png, read_rgb8
    from ihcflow.monitoring.simulate import scale_brightness

    with tempfile.TemporaryDirectory(prefix="ihcflow-shot-") as tmp:
        work = Path(tmp)
        for name in ("models", "data", "processed", "reports"):
            (work / name).symlink_to((args.root / name).resolve())
        ihcflow("data", "synth", "--out", "new", "--per-class", "4", "--patients", "1",
                "--seed", "2027", cwd=work)  # fmt: skip
        for path in sorted((work / "new").rglob("*.png")):
            path.write_bytes(encode_png(scale_brightness(read_rgb8(path)[0], 0.8)))
        print(
            ihcflow("label", "select", "new", "-n", "6", "--out", "labelling/scanner-2", cwd=work)
        )
        with running(work / "label-studio") as studio:
            env = {"LABEL_STUDIO_URL": studio.url, "LABEL_STUDIO_API_KEY": studio.token}
            print(ihcflow("label", "push", "labelling/scanner-2", cwd=work, env=env))
            pushed = json.loads((work / "labelling/scanner-2/push.json").read_text())
            with open(work / "labelling/scanner-2/manifest.csv", newline="") as fh:
                first = next(csv.DictReader(fh))  # rank 1
            task = pushed["tasks"][first["sha256"]]
            guess = first["predicted"]
            person = Labeller(studio.url, "pathologist@lab.invalid", "a-long-password-1")
            checked = "[...document.querySelectorAll('.ant-checkbox-wrapper-checked')]"
            pre_selected = f"{checked}.map(e => e.textContent).join('|')"
            screenshot(
                f"{studio.url}/projects/{pushed['project']}/data?task={task}",
                person.cookies,
                args.out,
                ready=f"{pre_selected}.startsWith({json.dumps(guess)})",
                size=(1400, 1150),
                timeout=300,
            )
            person.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
