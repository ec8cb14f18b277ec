"""``python -m ihcflow.monitoring`` = ``ihcflow drift`` (for cron jobs without the entry point)."""

import sys

from ihcflow.monitoring.cli import main

sys.exit(main())
