"""Small in-process caches held on ``app.state``: workers online, and loaded Predictors."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class WorkersOnline:
    """``worker.queue.workers_online`` cached for ``ttl`` seconds.

    A ping of the workers takes up to its timeout when none answers; 200 clients polling GET /jobs/{id}
    must not each pay it, so one caller refreshes while the others read the last value.
    None means unknown (the broker did not answer).
    """

    def __init__(self, probe: Callable[[], int], ttl: float = 5.0) -> None:
        self._probe = probe
        self.ttl = ttl
        self._lock = threading.Lock()
        self._value: int | None = None
        self._at = float("-inf")

    def get(self) -> int | None:
        if time.monotonic() - self._at < self.ttl:
            return self._value
        # Only one thread refreshes; the rest use the stale value rather than wait.
        if not self._lock.acquire(blocking=self._at == float("-inf")):
            return self._value
        try:
            if time.monotonic() - self._at < self.ttl:
                return self._value
            try:
                self._value = int(self._probe())
            except Exception as e:  # broker down: say "unknown", do not fail the request
                log.warning("could not count workers: %s", e)
                self._value = None
            self._at = time.monotonic()
            return self._value
        finally:
            self._lock.release()


class PredictorCache:
    """The last few loaded Predictors by checkpoint path (checkpoint directories never change once written)."""

    def __init__(self, loader: Callable[[str], Any], maxsize: int = 4) -> None:
        self._loader = loader
        self.maxsize = maxsize
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str) -> Any:
        with self._lock:
            if path in self._items:
                self._items.move_to_end(path)
                return self._items[path]
        predictor = self._loader(path)  # slow: outside the lock
        with self._lock:
            self._items[path] = predictor
            self._items.move_to_end(path)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return predictor

    def __len__(self) -> int:
        return len(self._items)
