"""A benchmark's latest results: ``<name>-latest.json`` and ``.md`` in the results folder,
replacing the last run's (the repo keeps the latest run of each benchmark only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def write_latest(folder: Path, name: str, result: Any, text: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    as_json, as_md = folder / f"{name}-latest.json", folder / f"{name}-latest.md"
    as_json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    as_md.write_text(text)
    return as_json, as_md


def finish(folder: Path, name: str, result: Any, text: str, ok: bool) -> int:
    """Keep the run as the latest, print its report; the exit status (1: a check failed)."""
    write_latest(folder, name, result, text)
    print(text)
    return 0 if ok else 1
