"""What `make demo`, `make test` and the benchmarks (`make bench`, ...) need, installed first.

    python -m meter.system_needs test      # the first step of `make test` (and of CI)

How this works: ``probe`` looks at the machine (which programs are missing, root
or passwordless sudo, apt-get, pip, the service manager); ``decide`` is pure and
turns that into a ``Plan``: the Debian packages to install and the services
their install starts that are stopped again (Debian starts redis-server,
PostgreSQL and nginx on ports 6379, 5432 and 80; ours run on ports of their
own), or the ``embedded`` extra's servers to pip-install, or the one line that
says what to install, and nothing is done. ``ensure`` carries the plan out and
looks again. The test fixtures and ``meter dev`` call ``check`` and stop with
the same line when something is missing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import IO, Literal

from meter.program_paths import (
    SYSTEM,
    Search,
    find_chromium,
    find_nginx,
    find_pango,
    find_pdftoppm,
    find_pg_bin,
    find_program,
    find_redis_server,
    find_wrk,
)

ServiceManager = Literal["systemd", "service"] | None


@dataclass(frozen=True, slots=True)
class Need:
    name: str  # as the messages name it
    package: str  # Debian's package
    service: str | None  # the service Debian starts when it installs the package
    embedded: bool  # the ``embedded`` extra ships one
    find: Callable[[Search], str | None]


REDIS = Need("redis-server", "redis-server", "redis-server", True, find_redis_server)
POSTGRES = Need("PostgreSQL", "postgresql", "postgresql", True, find_pg_bin)
WRK = Need("wrk", "wrk", None, False, find_wrk)  # tests/test_loadtests.py drives wrk
NGINX = Need("nginx", "nginx", "nginx", False, find_nginx)  # a real upstream; the bench
CHROMIUM = Need("chromium", "chromium", None, False, find_chromium)  # tests/browser.py drives it
# weasyprint lays out the invoice PDFs with Pango (billing/render.py); the package brings
# Pango, HarfBuzz, fontconfig and, through fontconfig, the DejaVu fonts.
PANGO = Need("Pango", "libpangoft2-1.0-0", None, False, find_pango)
POPPLER = Need("pdftoppm", "poppler-utils", None, False, find_pdftoppm)  # the PDF's screenshot


@dataclass(frozen=True, slots=True)
class Profile:
    who: str  # what the messages say needs it
    needs: tuple[Need, ...]
    # The embedded extra's servers will do: its Redis (6.2) is built without TLS, which
    # the tests use, and the benchmark's figures are Debian's Redis.
    embedded: bool


PROFILES = {
    "demo": Profile("meter dev", (REDIS, POSTGRES, PANGO), embedded=True),
    "test": Profile(
        "the tests", (REDIS, POSTGRES, WRK, NGINX, CHROMIUM, PANGO, POPPLER), embedded=False
    ),
    "bench": Profile("the benchmark", (REDIS, WRK, NGINX), embedded=False),
    "admin-bench": Profile("the admin benchmark", (REDIS, POSTGRES), embedded=False),
    "recharge-bench": Profile("the recharge benchmark", (REDIS, POSTGRES, WRK), embedded=False),
}


@dataclass(frozen=True, slots=True)
class Machine:
    missing: tuple[Need, ...]
    root: bool
    sudo: bool  # not root, and `sudo -n` works
    apt_get: bool
    pip: bool  # this Python can pip-install the embedded extra
    services: ServiceManager


@dataclass(frozen=True, slots=True)
class Plan:
    apt: tuple[str, ...] = ()  # Debian packages to install
    sudo: bool = False  # through `sudo -n`
    stop: tuple[tuple[str, ...], ...] = ()  # commands that stop what the install started
    embedded: bool = False  # pip-install the embedded extra
    refusal: str | None = None  # the one line, when nothing here can be done


def _as_root(sudo: bool, *command: str) -> tuple[str, ...]:
    return ("sudo", "-n", *command) if sudo else command


def apt_install(plan: Plan) -> tuple[str, ...]:
    # sudo resets the environment: DEBIAN_FRONTEND is passed through env(1) there.
    frontend = ("env", "DEBIAN_FRONTEND=noninteractive") if plan.sudo else ()
    return _as_root(plan.sudo, *frontend, "apt-get", "install", "-y", "-qq", *plan.apt)


def apt_update(plan: Plan) -> tuple[str, ...]:
    return _as_root(plan.sudo, "apt-get", "update", "-qq")


def _stop_command(service: str, manager: ServiceManager, sudo: bool) -> tuple[str, ...] | None:
    if manager == "systemd":
        return _as_root(sudo, "systemctl", "stop", service)
    if manager == "service":
        return _as_root(sudo, "service", service, "stop")
    return None


def _names(needs: Sequence[Need]) -> str:
    return ", ".join(n.name for n in needs)


def _them(needs: Sequence[Need]) -> str:
    return "it" if len(needs) == 1 else "them"


def decide(profile: Profile, machine: Machine) -> Plan:
    missing = machine.missing
    if not missing:
        return Plan()
    if machine.apt_get and (machine.root or machine.sudo):
        sudo = not machine.root
        stops = (_stop_command(n.service, machine.services, sudo) for n in missing if n.service)
        return Plan(
            apt=tuple(n.package for n in missing),
            sudo=sudo,
            stop=tuple(s for s in stops if s is not None),
        )
    embeddable = profile.embedded and all(n.embedded for n in missing)
    if embeddable and machine.pip:
        return Plan(embedded=True)
    packages = " ".join(n.package for n in missing)
    alternative = " or `pip install -e '.[embedded]'`" if embeddable else ""
    if not machine.apt_get:
        how = f"there is no apt-get here: install {_them(missing)}{alternative}"
    else:
        how = (
            f"run as root (or with passwordless sudo) to have {_them(missing)} installed,"
            f" or install {_them(missing)}: `sudo apt-get install {packages}`{alternative}"
        )
    return Plan(refusal=f"{profile.who}: missing {_names(missing)}; {how}")


def missing_line(key: str, machine: Machine) -> str | None:
    """The line for a command run without the step (pytest, `meter dev`): the step's own
    refusal, or how to run the step when it could install what is missing."""
    if not machine.missing:
        return None
    profile = PROFILES[key]
    plan = decide(profile, machine)
    if plan.refusal:
        return plan.refusal
    return (
        f"{profile.who}: missing {_names(machine.missing)}; `python -m meter.system_needs {key}`"
        f" (the first step of `make {key}`) installs {_them(machine.missing)}"
    )


# -- the adapter: look, install, look again ------------------------------------------------


def _sudo_works(search: Search) -> bool:
    if find_program("sudo", search) is None:
        return False
    done = subprocess.run(
        ["sudo", "-n", "true"], env=_environment(search), capture_output=True, check=False
    )
    return done.returncode == 0


def _service_manager(search: Search, systemd_marker: str) -> ServiceManager:
    # systemctl is installed in containers where systemd is not running (it then fails).
    if os.path.isdir(systemd_marker) and find_program("systemctl", search):
        return "systemd"
    return "service" if find_program("service", search) else None


def probe(
    profile: Profile,
    search: Search = SYSTEM,
    *,
    root: bool | None = None,
    systemd_marker: str = "/run/systemd/system",
) -> Machine:
    looking = replace(search, embedded=search.embedded and profile.embedded)
    missing = tuple(n for n in profile.needs if n.find(looking) is None)
    root = os.geteuid() == 0 if root is None else root
    apt_get = find_program("apt-get", search) is not None
    return Machine(
        missing=missing,
        root=root,
        sudo=bool(missing) and not root and apt_get and _sudo_works(search),
        apt_get=apt_get,
        pip=importlib.util.find_spec("pip") is not None,
        services=_service_manager(search, systemd_marker),
    )


def check(key: str, search: Search = SYSTEM) -> str | None:
    """The one line when something ``key`` needs is missing, else None."""
    return missing_line(key, probe(PROFILES[key], search))


def _environment(search: Search) -> dict[str, str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if search.path is not None:
        env["PATH"] = search.path
    return env


def embedded_requirements() -> list[str]:
    """The ``embedded`` extra's requirements, as pyproject.toml declares them."""
    found = []
    for requirement in importlib.metadata.requires("meter") or []:
        spec, _, marker = requirement.partition(";")
        if "extra" in marker and '"embedded"' in marker.replace("'", '"'):
            found.append(spec.strip())
    return found


def _run(command: Sequence[str], search: Search) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), env=_environment(search), capture_output=True, text=True, check=False
    )


def carry_out(plan: Plan, search: Search, out: IO[str]) -> str | None:
    """Run the plan; a line saying what failed, or None."""
    if plan.apt:
        print(f"system_needs: installing {' '.join(plan.apt)} from Debian ...", file=out)
        done = _run(apt_install(plan), search)
        if done.returncode != 0:  # an old or missing package list: update it, then again
            _run(apt_update(plan), search)
            done = _run(apt_install(plan), search)
        if done.returncode != 0:
            print(done.stdout + done.stderr, file=out)
            return f"system_needs: `{' '.join(apt_install(plan))}` failed (exit {done.returncode})"
        for command in plan.stop:
            _run(command, search)  # not running (no service started): nothing to stop
    if plan.embedded:
        requirements = embedded_requirements()
        print(f"system_needs: installing {' '.join(requirements)} from PyPI ...", file=out)
        done = _run((sys.executable, "-m", "pip", "install", "-q", *requirements), search)
        if done.returncode != 0:
            print(done.stdout + done.stderr, file=out)
            return f"system_needs: `pip install {' '.join(requirements)}` failed"
    return None


def ensure(
    key: str,
    search: Search = SYSTEM,
    *,
    root: bool | None = None,
    systemd_marker: str = "/run/systemd/system",
    out: IO[str] = sys.stdout,
) -> str | None:
    """Install what ``key`` needs when it is missing; the one line when that cannot be
    done, else None."""
    profile = PROFILES[key]
    plan = decide(profile, probe(profile, search, root=root, systemd_marker=systemd_marker))
    if plan.refusal:
        return plan.refusal
    failed = carry_out(plan, search, out)
    if failed:
        return failed
    still = probe(profile, search, root=root, systemd_marker=systemd_marker).missing
    if still:
        return f"{profile.who}: still missing {_names(still)} after installing; see above"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = argparse.ArgumentParser(
        prog="python -m meter.system_needs",
        description="install what a make target needs (Debian packages as root, or the"
        " embedded extra), or say in one line what to install",
    )
    args.add_argument("profile", choices=sorted(PROFILES))
    line = ensure(args.parse_args(argv).profile)
    if line:
        print(line, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
