"""uvicorn's httptools protocol with a deadline on the request line and headers.

uvicorn bounds the idle time between keep-alive requests, but not a connection that is opened
and never sends anything, nor one that sends its headers a byte at a time (slowloris): both hold
a connection for ever.  This protocol closes a connection whose headers are not complete
``header_timeout_s`` after it opened (or after the request's first byte).  The body has its own
deadline in :mod:`service.api.middleware`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout_s: float | None = None  # None: SKU_SERVICE_CLIENT_TIMEOUTS__HEADER_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        if self.header_timeout_s is None:
            from service.api.settings import get_settings

            type(self).header_timeout_s = get_settings().client_timeouts.header_s

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(
                float(self.header_timeout_s or 10.0), self._headers_too_slow
            )

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            log.info("closing a connection from %s: no complete headers within %s s",
                     self.client, self.header_timeout_s)
            self.transport.close()
