"""The processes under test: echo upstream, nginx, plain aiohttp proxy, gateway, admin API.

Each is started as its own process (the gateway exactly as an operator runs it,
``python -m meter gateway`` configured by METER_* variables) and handed back as
a ``Server``: its URL, the root pid whose process tree is measured, and a
``stop``. A server that does not come up raises ``ServerFailed`` with the tail
of its log, so the harness can report it and go on with the others.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from meter import program_paths
from meter.local_servers import free_port

from .procstat import end_descendants, process_count

HERE = Path(__file__).parent
GATEWAY_HEALTH = "/_meter/readyz"


class ServerFailed(RuntimeError):
    pass


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def run_command(main: Callable[[], int | None]) -> NoReturn:
    """Run a load-test command so that no server it started outlives it.

    Python's default SIGTERM ends the process without running ``finally`` blocks,
    which is where the servers are stopped: here SIGTERM (``kill``, a CI timeout,
    ``make`` passing it on) unwinds like Ctrl-C, and whatever still runs after
    the unwinding (a wrk run, a server being started) is stopped too. Exit 130.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    code: int | None = 130
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted: stopping what was started", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        end_descendants()
    sys.exit(code)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _spawn(
    name: str,
    args: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path = HERE.parent,
) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    finally:
        out.close()


def wait_http(server: Server, path: str, timeout: float = 30.0) -> None:
    """Until ``path`` answers 2xx, or fail with the server's log tail."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerFailed(
                f"{server.name} exited with {server.proc.returncode} while starting; "
                f"its log ({server.log}):\n{log_tail(server.log)}"
            )
        try:
            with urllib.request.urlopen(server.url + path, timeout=1) as resp:
                if resp.status < 300:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    server.stop()
    raise ServerFailed(
        f"{server.name} did not answer {path} within {timeout:.0f}s ({last}); "
        f"its log ({server.log}):\n{log_tail(server.log)}"
    )


def start_upstream(folder: Path) -> Server:
    port = free_port()
    log = folder / "upstream.log"
    proc = _spawn(
        "upstream", [sys.executable, "-m", "meter.echo_upstream", "--port", str(port)], log
    )
    server = Server("upstream", f"http://127.0.0.1:{port}", proc, log)
    wait_http(server, "/healthz")
    return server


def start_plain_proxy(folder: Path, upstream_url: str) -> Server:
    port = free_port()
    log = folder / "plain_proxy.log"
    args = [
        sys.executable,
        "-m",
        "loadtests.plain_proxy",
        "--port",
        str(port),
        "--upstream",
        upstream_url,
    ]
    server = Server("aiohttp", f"http://127.0.0.1:{port}", _spawn("aiohttp", args, log), log)
    wait_http(server, "/healthz")
    return server


# -- nginx ---------------------------------------------------------------------------


def nginx_config(folder: Path, port: int, upstream_port: int, workers: int) -> str:
    """A plain reverse proxy with upstream keep-alive, no logging, everything in ``folder``."""
    return f"""\
worker_processes {workers};
daemon off;
master_process on;
pid {folder}/nginx.pid;
error_log {folder}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    upstream echo {{
        server 127.0.0.1:{upstream_port};
        keepalive 512;
        keepalive_requests 100000000;
        keepalive_timeout 75s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
"""


def start_nginx(folder: Path, upstream_url: str, workers: int = 1) -> Server:
    binary = program_paths.find_nginx()
    if binary is None:  # `make bench` installs it first (meter.system_needs)
        raise ServerFailed("nginx is not installed (apt-get install nginx)")
    conf_dir = folder / f"nginx-{workers}w"
    conf_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(conf_dir, 0o755)  # workers may run as nobody
    port = free_port()
    upstream_port = int(upstream_url.rsplit(":", 1)[1])
    conf = conf_dir / "nginx.conf"
    conf.write_text(nginx_config(conf_dir, port, upstream_port, workers))
    log = conf_dir / "nginx.out"
    args = [binary, "-p", str(conf_dir), "-e", str(conf_dir / "nginx-error.log"), "-c", str(conf)]
    name = "nginx" if workers == 1 else f"nginx-{workers}w"
    server = Server(name, f"http://127.0.0.1:{port}", _spawn(name, args, log), log)
    wait_http(server, "/healthz")
    return server


# -- the services, from this checkout or another -------------------------------------


def checkout(env: dict[str, str], source: Path | None) -> tuple[Path, dict[str, str]]:
    """The tree a service runs from (this checkout unless ``source``) and ``env`` for it:
    another checkout's packages go ahead of the installed one (``python -m`` also puts
    the cwd first, and the service runs in its tree); the Python stays this venv's."""
    if source is None:
        return HERE.parent, env
    tree = source.resolve()
    return tree, {
        **env,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(tree), env.get("PYTHONPATH")))),
    }


def start_admin(folder: Path, env: dict[str, str], name: str, source: Path | None = None) -> Server:
    """``python -m meter admin`` with ``env`` (METER_* settings; its own port is chosen
    here), from ``source`` like ``start_gateway``; up once ``/readyz`` answers."""
    port = free_port()
    tree, env = checkout(env, source)
    env = {**env, "METER_ADMIN_HOST": "127.0.0.1", "METER_ADMIN_PORT": str(port)}
    if not (tree / "admin" / "service.py").exists():
        raise ServerFailed(f"{tree}/admin/service.py does not exist: no admin API to run")
    log = folder / f"{name}.log"
    proc = _spawn(name, [sys.executable, "-m", "meter", "admin"], log, env, cwd=tree)
    server = Server(name, f"http://127.0.0.1:{port}", proc, log)
    wait_http(server, "/readyz")
    return server


# -- the gateway ---------------------------------------------------------------------


def start_gateway(
    folder: Path, env: dict[str, str], workers: int, name: str, source: Path | None = None
) -> Server:
    """``python -m meter gateway`` with ``env`` (METER_* settings) and ``workers`` workers;
    ``source``: the gateway of another checkout (an A/B of a change), same Python."""
    port, metrics_port = free_port(), free_port()
    tree, env = checkout(env, source)
    env = {
        **env,
        "METER_GATEWAY_HOST": "127.0.0.1",
        "METER_GATEWAY_PORT": str(port),
        "METER_GATEWAY_METRICS_PORT": str(metrics_port),
        "METER_GATEWAY_WORKERS": str(workers),
    }
    log = folder / f"{name}.log"
    if not (tree / "gateway" / "service.py").exists():
        raise ServerFailed(f"{tree}/gateway/service.py does not exist: no gateway to run")
    proc = _spawn(name, [sys.executable, "-m", "meter", "gateway"], log, env, cwd=tree)
    server = Server(name, f"http://127.0.0.1:{port}", proc, log)
    # Worker 0's operators' listener; a checkout from before it had one serves /_meter/metrics.
    server.extra["metrics"] = (
        f"http://127.0.0.1:{metrics_port}/metrics"
        if (tree / "gateway" / "ops.py").read_text().count("serve_operations")
        else server.url + "/_meter/metrics"
    )
    wait_http(server, GATEWAY_HEALTH)
    if workers > 1:  # the supervisor and every worker must be up before the load starts
        deadline = time.monotonic() + 30
        while process_count(server.pid) < workers + 1:
            if time.monotonic() > deadline:
                server.stop()
                raise ServerFailed(f"{name}: fewer than {workers} workers after 30s")
            time.sleep(0.05)
        time.sleep(0.5)  # let the last worker bind
    return server
