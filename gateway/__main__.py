"""``python -m gateway``: run the gateway with settings from the environment."""

from __future__ import annotations

import sys

from gateway.service import main
from meter.settings import ConfigError, Settings

if __name__ == "__main__":
    try:
        main(Settings.from_env())
    except ConfigError as exc:
        print(f"meter gateway: {exc}", file=sys.stderr)
        sys.exit(2)
