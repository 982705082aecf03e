"""Apply the plain SQL migrations in ``meter/migrations`` in order, once each.

Each file runs in its own transaction together with its row in
``schema_migrations``; an advisory lock keeps two `meter migrate` runs from
racing. Running it again applies nothing.
"""

from __future__ import annotations

from importlib import resources

import asyncpg

MIGRATION_LOCK = 0x6D65746572  # "meter"


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("meter").joinpath("migrations")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), folder.joinpath(name).read_text("utf-8")) for name in names]


async def migrate(dsn: str) -> list[str]:
    """Apply what is missing; returns the versions applied now."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("select pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await conn.execute(
                "create table if not exists schema_migrations ("
                " version text primary key, applied_at timestamptz not null default now())"
            )
            done = {r["version"] for r in await conn.fetch("select version from schema_migrations")}
            applied = []
            for version, sql in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "insert into schema_migrations (version) values ($1)", version
                    )
                applied.append(version)
            return applied
        finally:
            await conn.execute("select pg_advisory_unlock($1)", MIGRATION_LOCK)
    finally:
        await conn.close()
