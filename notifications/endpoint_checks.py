"""What a webhook endpoint may be saved with: its fields, and its host resolved now.

The fields are judged without I/O (``field_errors``: the URL's shape as
``webhook_delivery.url_problem`` says, the description's length, each event type in
the catalogue). ``target_problem`` then resolves the host through
``webhook_delivery.GuardedResolver`` and refuses it unless some address is one a
webhook may be sent to, so the customer hears of a loopback or metadata URL when
saving it. The sender checks again when it connects: a name that resolves
differently later is caught there.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from notifications.events import EVENT_TYPES
from notifications.webhook_delivery import GuardedResolver, TargetRefused, address_problem
from notifications.webhook_delivery import url_problem as url_shape_problem

MAX_URL_CHARS = 2000
MAX_DESCRIPTION_CHARS = 200
RESOLVE_SECONDS = 5.0


def field_errors(
    url: str | None, description: str | None, event_types: Sequence[str] | None
) -> list[tuple[str, str]]:
    """What is wrong with the fields before any lookup (None: not given)."""
    errors: list[tuple[str, str]] = []
    if url is not None:
        problem = "is too long" if len(url) > MAX_URL_CHARS else url_shape_problem(url)
        if problem:
            errors.append(("url", problem))
    if description is not None and len(description) > MAX_DESCRIPTION_CHARS:
        errors.append(("description", f"at most {MAX_DESCRIPTION_CHARS} characters"))
    unknown = [t for t in event_types or () if t not in EVENT_TYPES]
    if unknown:
        errors.append(("event_types", f"not an event type: {', '.join(map(repr, unknown))}"))
    return errors


def event_filter(event_types: Sequence[str]) -> list[str]:
    """The types once each, in the catalogue's order (empty: every event)."""
    wanted = set(event_types)
    return [t for t in EVENT_TYPES if t in wanted]


async def target_problem(
    url: str, allow_private: bool, resolver: AbstractResolver | None = None
) -> str | None:
    """Why ``url``'s host may not receive webhooks now (resolved), or None."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        why = address_problem(literal, allow_private)
        return f"{host} is {why}" if why else None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    inner = resolver or DefaultResolver()
    guard = GuardedResolver(allow_private, inner)
    try:
        await asyncio.wait_for(guard.resolve(host, port, socket.AF_UNSPEC), RESOLVE_SECONDS)
    except TargetRefused as exc:
        return str(exc)
    except UnicodeError:  # the system's resolver encodes the name first (IDNA)
        return f"{host} is not a host name"
    except (OSError, TimeoutError):
        return f"{host} does not resolve to an address"
    finally:
        if resolver is None:
            await inner.close()
    return None
