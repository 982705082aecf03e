"""`python -m ledger`: run the ledger worker with settings from the environment."""

from __future__ import annotations

import sys

from ledger.service import main
from meter.settings import ConfigError, Settings

if __name__ == "__main__":
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    main(settings)
