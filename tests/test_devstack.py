"""`meter dev` end to end: it starts everything, serves a metered call, and stops it all
(Ctrl-C, a hangup, kill -9); its options; without redis-server it stops with one line."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from meter import local_servers
from meter.local_servers import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="meter-dev-"))
    os.chmod(path, 0o755)  # PostgreSQL runs as another user when we are root
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _read_until_ready(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "Ctrl-C stops everything" in line:
            return "".join(seen)
    raise AssertionError("meter dev never became ready:\n" + "".join(seen))


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "stop", [signal.SIGINT, signal.SIGHUP, signal.SIGKILL], ids=["ctrl-c", "hangup", "kill-9"]
)
def test_meter_dev_serves_a_metered_call_and_stops_everything_it_started(
    data_dir: Path, stop: signal.Signals
) -> None:
    """Ctrl-C, or the terminal going away (SIGHUP), stops every process it started; so
    does killing it outright (each gets its stop signal when its parent dies)."""
    ports = {name: free_port() for name in ("gateway", "admin", "ledger")}
    env = {
        **os.environ,
        "METER_DATA_DIR": str(data_dir),
        "METER_GATEWAY_PORT": str(ports["gateway"]),
        "METER_ADMIN_PORT": str(ports["admin"]),
        "METER_LEDGER_PORT": str(ports["ledger"]),
        "METER_ADMIN_TOKEN": "dev-test-token",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "meter", "dev"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner = _read_until_ready(proc, time.monotonic() + 90)
        match = re.search(r"Authorization: Bearer (mtr_\w+)' \\\n\s+'(http://[^']+)'", banner)
        assert match, banner
        key, url = match.groups()
        account = re.search(r"Demo account (acct_\w+)", banner)
        assert account, banner
        for store in ("Redis", "Postgres"):
            port = re.search(store + r" +\w+://[^ ]*127\.0\.0\.1:(\d+)", banner)
            assert port, banner
            ports[store] = int(port.group(1))

        req = urllib.request.Request(
            url, data=b'{"hello": "world"}', headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
            charged = int(resp.headers["X-Meter-Charged"])
            available = int(resp.headers["X-Credits-Available"])
            body = orjson.loads(resp.read())
        assert charged > 0
        assert body["account"] == account.group(1)

        balance_req = urllib.request.Request(
            f"http://127.0.0.1:{ports['admin']}/v1/accounts/{account.group(1)}/balance",
            headers={"Authorization": "Bearer dev-test-token"},
        )
        with urllib.request.urlopen(balance_req, timeout=10) as resp:
            balance = orjson.loads(resp.read())
        assert balance["balance"] == 20_000_000 - charged
        assert balance["available"] == available
    finally:
        proc.send_signal(stop)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            assert proc.stdout is not None
            proc.stdout.close()
    if stop == signal.SIGKILL:
        assert code == -signal.SIGKILL
        deadline = time.monotonic() + 30
        while any(_listening(p) for p in ports.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        assert code == 0
    assert not {name: p for name, p in ports.items() if _listening(p)}


def test_a_data_folder_still_in_use_by_an_earlier_run_is_refused(data_dir: Path) -> None:
    """What an earlier ``meter dev`` killed outright leaves behind: its Redis and Postgres,
    still running on the data folder. A second one is not started on the same files; the
    error names the process to stop. Once they are gone, the folder starts again."""
    redis_dir, pg_dir = data_dir / "redis", data_dir / "postgres"
    for start, name, pid_file in (
        (
            lambda: local_servers.start_redis(redis_dir, persist=True),
            "Redis",
            redis_dir / "redis.pid",
        ),
        (
            lambda: local_servers.start_postgres(pg_dir),
            "PostgreSQL",
            pg_dir / "pgdata" / "postmaster.pid",
        ),
    ):
        first = start()
        try:
            with pytest.raises(local_servers.ServerError) as refused:
                start()
            message = str(refused.value)
            assert f"a {name} server from an earlier run still uses" in message
            stop_it = re.search(r"\(kill (\d+)\) and start again$", message)
            assert stop_it, message
            assert stop_it.group(1) == pid_file.read_text().split()[0]
        finally:
            first.stop()
        start().stop()  # its pid file went with it


def test_meter_dev_help_lists_its_options() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meter", "dev", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps its lines
    for option, help_text in [
        ("--host ADDRESS", "listen address of the gateway, admin API and ledger worker"),
        ("--gateway-port PORT", "the gateway's port (default: $METER_GATEWAY_PORT, else 8080)"),
        ("--admin-port PORT", "the admin API's port (default: $METER_ADMIN_PORT, else 8081)"),
        ("--ledger-port PORT", "the ledger worker's port (default: $METER_LEDGER_PORT, else 8082)"),
        (
            "--data-dir DIR",
            "where Redis and Postgres data and the logs are kept"
            " (default: $METER_DATA_DIR, else .data)",
        ),
    ]:
        assert f"{option} {help_text}" in text, text


def test_meter_dev_refuses_a_port_that_is_not_one() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meter", "dev", "--gateway-port", "70000"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "argument --gateway-port: not a port: '70000'" in done.stderr


def test_meter_dev_without_redis_stops_with_one_line(tmp_path: Path) -> None:
    """Run directly, not through `make demo`: a PATH without redis-server (nor apt-get)."""
    env = {**os.environ, "PATH": str(tmp_path), "METER_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-m", "meter", "dev"], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 1
    assert done.stderr.startswith("meter dev: missing redis-server; "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "data").exists()  # stopped before starting anything
