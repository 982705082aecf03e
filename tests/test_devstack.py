"""`meter dev` end to end: it starts everything, serves a metered call, and stops it all
(Ctrl-C, a hangup, kill -9); its options; the README's example call; without redis-server
it stops with one line."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import orjson
import pytest

from meter import local_servers
from meter.devstack import DEMO_PLANS
from meter.local_servers import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="meter-dev-"))
    os.chmod(path, 0o755)  # PostgreSQL runs as another user when we are root
    yield path
    # Shown only when the test fails: how each process of that run ended.
    for log in sorted(path.glob("**/logs/*.log")):
        lines = log.read_text(errors="replace").splitlines()
        print(f"--- {log.name}, last lines of {len(lines)}", *lines[-15:], sep="\n")
    shutil.rmtree(path, ignore_errors=True)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _meter_dev(env: dict[str, str], *options: str) -> subprocess.Popen[str]:
    """``meter dev`` with ``env`` and ``options``, its output (the banner) read as text.
    Started the way a script's background job is, with SIGINT ignored: Ctrl-C must stop
    it all the same."""
    return subprocess.Popen(
        [sys.executable, "-m", "meter", "dev", *options],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_ignore_sigint,
    )


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


def _stop(proc: subprocess.Popen[str], signum: int) -> int:
    """Its exit code once ``signum`` stopped it; what it printed after the banner when it
    does not stop within a minute."""
    assert proc.stdout is not None
    proc.send_signal(signum)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("meter dev did not stop:\n" + proc.stdout.read()) from None
    finally:
        proc.stdout.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _first_response(url: str) -> urllib.error.HTTPError:
    """The answer itself, a redirect not followed (urllib raises it as an HTTPError)."""
    try:
        urllib.request.build_opener(_NoRedirect()).open(url, timeout=10)
    except urllib.error.HTTPError as answer:
        answer.close()
        return answer
    raise AssertionError(f"{url} did not redirect")


def _mail_reaches_the_sink(port: int, banner: str) -> None:
    """A message sent to the sink is what the banner's command shows."""
    message = EmailMessage()
    message["From"] = "meter <billing@localhost>"
    message["To"] = "owner@demo.test"
    message["Subject"] = "Hello from the test"
    message.set_content("It arrived.\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.send_message(message)
    command = re.search(r"\n  (\S+ -m meter\.smtp_sink --show \S+)\n", banner)
    assert command, banner
    shown = subprocess.run(
        shlex.split(command.group(1)), capture_output=True, text=True, cwd=ROOT, timeout=30
    )
    assert shown.returncode == 0, shown.stderr
    assert "Subject: Hello from the test\n" in shown.stdout and "It arrived." in shown.stdout


@pytest.mark.parametrize(
    "stop", [signal.SIGINT, signal.SIGHUP, signal.SIGKILL], ids=["ctrl-c", "hangup", "kill-9"]
)
def test_meter_dev_serves_a_metered_call_and_stops_everything_it_started(
    data_dir: Path, stop: signal.Signals
) -> None:
    """Ctrl-C, or the terminal going away (SIGHUP), stops every process it started; so
    does killing it outright (each gets its stop signal when its parent dies)."""
    ports = {name: free_port() for name in ("gateway", "admin", "ledger", "portal")}
    env = {
        **os.environ,
        "METER_DATA_DIR": str(data_dir),
        "METER_GATEWAY_PORT": str(ports["gateway"]),
        "METER_GATEWAY_METRICS_PORT": "0",
        "METER_ADMIN_PORT": str(ports["admin"]),
        "METER_LEDGER_PORT": str(ports["ledger"]),
        "METER_PORTAL_PORT": str(ports["portal"]),
        "METER_ADMIN_TOKEN": "dev-test-token",
    }
    proc = _meter_dev(env)
    try:
        banner = _read_until_ready(proc, time.monotonic() + 90)
        match = re.search(r"Authorization: Bearer (mtr_\w+)' \\\n\s+'(http://[^']+)'", banner)
        assert match, banner
        key, url = match.groups()
        account = re.search(r"Demo account (acct_\w+)", banner)
        assert account, banner
        link = re.search(r"(http://127\.0\.0\.1:\d+/s/[\w-]+)\n", banner)
        assert link, banner
        signed_in = _first_response(link.group(1))
        assert signed_in.code == 303, banner
        assert "meter_portal=" in signed_in.headers.get("Set-Cookie", ""), banner
        for store in ("Redis", "Postgres"):
            port = re.search(store + r" +\w+://[^ ]*127\.0\.0\.1:(\d+)", banner)
            assert port, banner
            ports[store] = int(port.group(1))
        sink = re.search(
            r"Mail +smtp://127\.0\.0\.1:(\d+) +\(a sink: every message kept in", banner
        )
        assert sink, banner
        ports["smtp-sink"] = int(sink.group(1))
        _mail_reaches_the_sink(ports["smtp-sink"], banner)

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
        # The demo traffic meter dev sent (its banner says how much), and this call.
        demo = re.search(r"Demo traffic: (\d+) calls, \$([0-9.]+)", banner)
        assert demo is not None, banner
        spent = round(float(demo.group(2)) * 1_000_000)
        # $20 of credits and the Starter plan's included credits, prorated from today.
        grants_req = urllib.request.Request(
            f"http://127.0.0.1:{ports['admin']}/v1/accounts/{account.group(1)}/grants",
            headers={"Authorization": "Bearer dev-test-token"},
        )
        with urllib.request.urlopen(grants_req, timeout=10) as resp:
            grants = orjson.loads(resp.read())["data"]
        [included] = [g["amount"] for g in grants if g["kind"] == "included"]
        assert 0 < included <= DEMO_PLANS[0]["included_credits"]
        assert balance["balance"] == 20_000_000 + included - spent - charged
        assert balance["available"] == available
    finally:
        code = _stop(proc, stop)
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
        (
            "--host ADDRESS",
            "listen address of the gateway, admin API, billing portal and ledger worker",
        ),
        (
            "--portal-port PORT",
            "the billing portal's port (default: $METER_PORTAL_PORT, else 8083)",
        ),
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


def _curl_request(command: str) -> urllib.request.Request:
    """What the curl command line sends (-H headers, -d a POST body), for urllib."""
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:2] == ["curl", "-i"], words
    headers, data, url = {}, None, None
    rest = iter(words[2:])
    for word in rest:
        if word == "-H":
            name, _, value = next(rest).partition(": ")
            headers[name] = value
        elif word == "-d":
            data = next(rest).encode()
        else:
            url = word
    assert url is not None, words
    return urllib.request.Request(url, data=data, headers=headers)


def _as_shown(command: str) -> str:
    """A curl example with its key and address taken out, one line per line, unindented."""
    command = re.sub(r"mtr_[\w.]+", "mtr_KEY", command)
    command = re.sub(r"http://[\d.]+:\d+", "http://HOST:PORT", command)
    return "\n".join(line.strip() for line in command.strip().splitlines())


@pytest.mark.timeout(120)
def test_the_readme_example_call_on_meter_dev_started_with_options(data_dir: Path) -> None:
    """Options win over the variables; the README's curl line is the banner's, and it is
    charged what the README says."""
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```\n(curl -i .*?)\n```", readme, re.DOTALL)
    claimed = re.search(r"`X-Meter-Charged: (\d+)`", readme)
    assert example and claimed
    ports = {name: free_port() for name in ("gateway", "admin", "ledger", "portal")}
    decoys = {name: free_port() for name in ports}
    env = {
        **os.environ,
        "METER_DATA_DIR": str(data_dir / "not-here"),
        "METER_GATEWAY_PORT": str(decoys["gateway"]),
        "METER_GATEWAY_METRICS_PORT": "0",
        "METER_ADMIN_PORT": str(decoys["admin"]),
        "METER_LEDGER_PORT": str(decoys["ledger"]),
        "METER_PORTAL_PORT": str(decoys["portal"]),
        "METER_ADMIN_TOKEN": "dev-test-token",
    }
    options = [f"--{name}-port={port}" for name, port in ports.items()]
    options += ["--host", "127.0.0.1", "--data-dir", str(data_dir / "here")]
    proc = _meter_dev(env, *options)
    try:
        banner = _read_until_ready(proc, time.monotonic() + 90)
        shown = re.search(r"Try a metered call:\n\n(.*?)\n\n", banner, re.DOTALL)
        assert shown, banner
        assert _as_shown(shown.group(1)) == _as_shown(example.group(1))
        request = _curl_request(shown.group(1))
        assert request.full_url.startswith(f"http://127.0.0.1:{ports['gateway']}/")
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["X-Meter-Charged"] == claimed.group(1)
        for url in (
            f"http://127.0.0.1:{ports['admin']}/healthz",
            f"http://127.0.0.1:{ports['ledger']}/healthz",
        ):
            with urllib.request.urlopen(url, timeout=10) as resp:
                assert resp.status == 200
        assert not [name for name, port in decoys.items() if _listening(port)]
        assert (data_dir / "here" / "logs" / "gateway.log").exists()
        assert not (data_dir / "not-here").exists()
    finally:
        code = _stop(proc, signal.SIGINT)
    assert code == 0
