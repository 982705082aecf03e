"""Errors that know their HTTP answer, rendered as RFC 9457 problem details.

Each service has its own hierarchy under ``Problem`` (gateway refusals, admin
API errors); one middleware or one code path per service renders them with
``render``. ``type`` is a stable URI the client can switch on.

    Problem
    +-- gateway.errors.Refusal ... (401, 402, 403, 413, 429, 502, 503, 504)
    +-- admin.errors.AdminError ... (400, 401, 403, 404, 409, 413, 415, 422)
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "https://meter.dev/problems/"


class Problem(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra
        self.headers: dict[str, str] = {}

    @property
    def type(self) -> str:
        return TYPE_BASE + self.slug

    def body(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            doc["instance"] = instance
        doc.update(self.extra)
        return doc


def render(problem: Problem, instance: str | None = None) -> bytes:
    return orjson.dumps(problem.body(instance))
