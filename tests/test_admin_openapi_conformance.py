"""The admin API agrees with its own OpenAPI document: schemathesis against the real server.

The admin app runs in this test's event loop over real Redis and Postgres; the
schemathesis CLI runs as a child process against it, over every operation and all
its phases (coverage, fuzzing, stateful) and checks: status codes, content types,
response headers and schemas, schema-violating requests refused, schema-valid ones
accepted (``admin_openapi_checks``: the one rule the document states in words), no
5xx, auth enforced. Seeded, one worker, no example database: the same cases each run.

``ADMIN_FUZZ_EXAMPLES`` sets the examples per operation (``make fuzz-admin`` runs many).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer
from test_admin_support import NOW, TOKEN, Clock, settings

from admin import operations as openapi
from admin.app import create_app

EXAMPLES = int(os.environ.get("ADMIN_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("ADMIN_FUZZ_SEED", "23"))
# positive_data_acceptance: replaced by admin_openapi_checks' documented_positive_data_acceptance.
# object_level_authorization: needs two principals; the admin API has one token.
EXCLUDED_CHECKS = "positive_data_acceptance,object_level_authorization"
HOOKS = "admin_openapi_checks"
CONFIG = Path(__file__).with_name("admin_openapi.toml")
# The default body limit: every body the schemas allow fits (test_admin_support's 2 KiB
# would refuse a valid 200-character name written as JSON escapes with 413).
BODY_LIMIT = "65536"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def operations(doc: dict[str, Any]) -> int:
    return sum(1 for ops in doc["paths"].values() for method in ops if method in METHODS)


async def test_the_admin_api_agrees_with_its_openapi_document(
    redis_url: str, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = settings(redis_url, database_url, METER_ADMIN_MAX_BODY_BYTES=BODY_LIMIT)
    server = TestServer(create_app(config, clock=Clock()))
    await server.start_server()
    report = tmp_path / "report.json"
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run"),
        str(server.make_url("/v1/openapi.json")),
        *("--header", f"Authorization: Bearer {TOKEN}"),
        *("--checks", "all", "--exclude-checks", EXCLUDED_CHECKS),
        *("--max-examples", str(EXAMPLES), "--seed", str(SEED)),
        *("--workers", "1", "--generation-database", "none", "--no-color"),
        *("--report", "json", "--report-json-path", str(report)),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent),
        "SCHEMATHESIS_HOOKS": HOOKS,
        "ADMIN_FUZZ_TODAY": datetime.fromtimestamp(NOW, UTC).date().isoformat(),
    }
    try:
        with caplog.at_level(logging.WARNING):
            child = await asyncio.create_subprocess_exec(
                *command,
                cwd=tmp_path,  # schemathesis' own files land there, not in the repository
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await child.communicate()
    finally:
        await server.close()
    text = output.decode(errors="replace")
    run = orjson.loads(report.read_bytes())
    cases = run["test_cases"]
    print(
        f"\nschemathesis {run['schemathesis_version']}: {cases['generated']} cases,"
        f" {run['operations']['tested']} operations, {run['running_time']:.1f} s,"
        f" {EXAMPLES} examples per operation, seed {SEED}"
    )
    assert child.returncode == 0 and run["failures"] == [] and run["errors"] == [], text[-20_000:]
    # Every operation but GET /v1/openapi.json, which schemathesis reads rather than tests.
    assert run["operations"]["tested"] == operations(openapi.document()) - 1, text[-5_000:]
    ran = {name: phase["status"] for name, phase in run["phases"].items() if name != "examples"}
    assert ran == {"coverage": "success", "fuzzing": "success", "stateful": "success"}, ran
    assert cases["generated"] >= 20 * run["operations"]["tested"], cases  # it ran for real
    # No pattern it could not read, no operation it could not reach, ...
    assert not any(run["warnings"].values()), run["warnings"]
    # The server logged nothing at ERROR: no traceback for any request the fuzzer sent,
    # the NUL-in-a-header probe included (a warning line, see admin.protocol_log).
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
