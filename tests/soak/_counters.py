"""The soak server's counters, kept where things happen and read by the runner through
``GET /_soak/counters`` (`tests.soak._app.Tracker`)."""

from __future__ import annotations

import threading
from collections import Counter


class Counters:
    """Thread-safe counters (sync endpoints run in the thread pool)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: Counter[str] = Counter()
        self.in_flight = 0

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.values[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {**self.values, "in_flight": self.in_flight}

    def reset(self) -> None:
        with self._lock:
            self.values.clear()

    def request_started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def request_ended(self) -> None:
        with self._lock:
            self.in_flight -= 1


COUNTERS = Counters()
