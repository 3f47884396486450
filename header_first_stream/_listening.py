"""What runs beside a watched response: the disconnect listener and the server-exit watch.

`Listening` is a base of `HeaderFirstStreamingResponse`. Its listener runs as a side task
of the response's watch (`_watch.run_watched`); when the client leaves, or the server
exits (with ``end_on_shutdown``), it stops the watch, the one "stop" signal of invariant 6
of `_response.py`. A subclass extends it through the hooks named there
(`_wait_for_disconnect`, `_listens_to_the_end`, `_start_tasks`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING

import anyio
from starlette.types import Receive

from ._shutdown import POLL_INTERVAL, keep_polling, unwatched, watch_server_exit
from ._watch import Watch

__all__ = ["FINAL_SEND_GRACE", "Listening"]

logger = logging.getLogger("header_first_stream")

FINAL_SEND_GRACE = 0.25
"""Seconds a final body message may still take once the client left or the server exits."""

# Entered where no scope is needed: cheaper than a CancelScope of its own.
_NO_SCOPE = nullcontext()


class Listening:
    """The listener beside a response, and what else runs beside it to its end."""

    # Options, as given to the constructor (the defaults here).
    end_on_shutdown = False
    shutdown_event: anyio.Event | None = None
    shutdown_grace_period: float = 0

    # The final body message is being sent: the listener must not cut it short.
    _ending = False
    # The listener starts the server-exit polling once the stream lived a while.
    _polls_later = False

    if TYPE_CHECKING:  # Starlette's `StreamingResponse.listen_for_disconnect`

        async def listen_for_disconnect(self, receive: Receive) -> None: ...

    def _listens_to_the_end(self) -> bool:
        """Whether the listener has work for the whole response, on every spec version.

        A subclass that starts tasks of its own in `_start_tasks` extends this.
        """
        return self.end_on_shutdown

    def _start_tasks(self, watch: Watch) -> Callable[[], None]:
        """Start what runs beside the body; return the call that stops it.

        A subclass adds its own tasks here (and says so in `_listens_to_the_end`).
        """
        if not self.end_on_shutdown:
            return unwatched
        self._polls_later = True
        return watch_server_exit(watch, lambda: self._on_server_exit(watch))

    async def _listen(
        self,
        receive: Receive,
        watch: Watch,
        listening: anyio.CancelScope | None,
    ) -> None:
        with listening or _NO_SCOPE:  # cancelled by the response once its head is out
            # A stream still open `POLL_INTERVAL` in makes sure the server's exit is
            # polled for (see `watch_server_exit`); shorter ones never need it.
            if not self._polls_later:
                await self._wait_for_disconnect(receive)
            elif not await self._wait_for_disconnect(receive, anyio.current_time() + POLL_INTERVAL):
                keep_polling(watch)
                await self._wait_for_disconnect(receive)
            await self._stop(watch)

    async def _wait_for_disconnect(self, receive: Receive, until: float = math.inf) -> bool:
        """The listener's wait: ``True`` once the client left, ``False`` at ``until``.

        A subclass may do more while it waits (pings), in the same cancel scope.
        """
        if until == math.inf:  # the common case: no cancel scope to pay for
            await self.listen_for_disconnect(receive)
            return True
        with anyio.CancelScope(deadline=until):
            await self.listen_for_disconnect(receive)
            return True
        return False

    def _on_server_exit(self, watch: Watch) -> None:
        if self.shutdown_event is not None:
            self.shutdown_event.set()
        logger.info("server shutting down: ending an open stream")
        # A body that ends by itself meanwhile ends the watch, and this task with it.
        watch.start_soon(self._stop, watch, self.shutdown_grace_period)

    async def _stop(self, watch: Watch, after: float = 0) -> None:
        """Cancel the response (the client left, or the server exits), after ``after``."""
        if after:
            await anyio.sleep(after)
        if self._ending:
            # The final message is being sent. A server may close the connection inside
            # that send (hypercorn does, on `Connection: close`) and report a disconnect:
            # cut it short only if it stalls, never half-way through a closing send.
            await anyio.sleep(FINAL_SEND_GRACE)
        watch.stop()
