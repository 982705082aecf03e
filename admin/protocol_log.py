"""How aiohttp's connection handler logs a request it could not parse.

A NUL or another control character in a header, a broken request line, an
oversized header: aiohttp's parser refuses the request and answers 400 itself
(text/plain, connection closed) before any middleware runs, then logs it at
ERROR with the parser's traceback, as if the server had failed. It is the
client's fault and says nothing about the server, so this logger, handed to the
handler through the app's ``handler_args``, logs it as one warning line with the
first line of the parser's reason; anything else aiohttp logs is left as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger

REASON_CHARS = 200  # the reason quotes the client's bytes: keep the line short


class ProtocolLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    def exception(
        self,
        msg: object,
        *args: object,
        exc_info: Any = True,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
        **kwargs: object,
    ) -> None:
        if isinstance(exc_info, HttpProcessingError):
            lines = str(exc_info.message).strip().splitlines() or [type(exc_info).__name__]
            self.logger.warning(
                "malformed request refused with %s: %s",
                exc_info.code,
                lines[0][:REASON_CHARS],
                extra={"peer": args[0] if args else None},
            )
            return
        self.logger.exception(
            msg, *args, exc_info=exc_info, stack_info=stack_info, stacklevel=stacklevel, extra=extra
        )


def handler_args() -> dict[str, Any]:
    """For ``web.Application(handler_args=...)``: aiohttp's handler, with this logger."""
    return {"logger": ProtocolLogger(server_logger, {})}
