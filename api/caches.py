"""Small in-process caches held on ``app.state``: loaded Predictors (the worker count is cached by
``broker.workers_online``)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


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
