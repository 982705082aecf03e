"""JSON answers of the routes outside the declared operations (probes, the document)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

JSON = "application/json"


def json_response(
    doc: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type=JSON, headers=headers)
