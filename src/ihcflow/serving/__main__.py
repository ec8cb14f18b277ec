"""``python -m ihcflow.serving``: the same as ``ihcflow serve`` (the container's entry point)."""

import sys

from ihcflow.serving.cli import main

sys.exit(main())
