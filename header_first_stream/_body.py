"""The body of a streamed response: iterated once, by the peek and the loop, closed once.

`ClosingBody` is a base of `HeaderFirstStreamingResponse`; it keeps invariant 4 of
`_response.py`: the body iterator is closed when the response ends for any reason, in
the task (and inside the watch) that iterated it, unless it is a native generator that ran
to its end (closed already: no cancel scope to pay for on the common path).
"""

from __future__ import annotations

import logging
import types
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import anyio
import anyio.to_thread

__all__ = ["ClosingBody"]

logger = logging.getLogger("header_first_stream")


class ClosingBody:
    """The body state of a response, and how it is closed."""

    body_iterator: AsyncIterable[Any]  # Starlette's attribute; an app may replace it

    cleanup_timeout: float | None = 30.0
    """Seconds closing the body iterator may take before it is abandoned (logged)."""

    # Each a class-level default until it changes (this is set up per request). The
    # iterator the peek and the loop share is created on first use, because an app may
    # still replace `body_iterator` after construction.
    _sync_content: object = None  # a sync iterable Starlette wrapped, to close it too
    _iterating: AsyncIterator[Any] | None = None
    _exhausted = False  # the iterator ended by itself

    def _body(self) -> AsyncIterator[Any]:
        """The body iterator, started once and shared by the peek and the loop."""
        if self._iterating is None:
            self._iterating = aiter(self.body_iterator)
        return self._iterating

    def _must_close(self) -> bool:
        # Asked once, where the response ends (a plain call, not a coroutine, as the
        # answer is mostly no). A native generator that ran to its end is closed already;
        # any other iterator (an SDK's stream object) may hold its connection until
        # aclose()/close(), even after its last chunk.
        if not self._exhausted or not isinstance(self._iterating, types.AsyncGeneratorType):
            return True
        sync = self._sync_content
        return hasattr(sync, "close") and not isinstance(sync, types.GeneratorType)

    async def _close_body(self) -> None:
        # Shielded: on a disconnect this runs inside a cancelled scope, and the
        # generator's own `finally` may need to await (closing an upstream connection).
        with anyio.move_on_after(self.cleanup_timeout, shield=True) as deadline:
            aclose = getattr(self._iterating or self.body_iterator, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    logger.exception("closing the body iterator failed")
            close = getattr(self._sync_content, "close", None)
            if close is not None:
                try:
                    # Abandoned, not waited for, when it outlasts cleanup_timeout.
                    await anyio.to_thread.run_sync(close, abandon_on_cancel=True)
                except Exception:
                    logger.exception("closing the body iterator failed")
        # `cancel_called`, not `cancelled_caught`: a generator that swallowed the
        # deadline's cancellation has still had its clean-up cut short.
        if deadline.cancel_called:
            logger.warning("closing the body iterator took over %ss", self.cleanup_timeout)
