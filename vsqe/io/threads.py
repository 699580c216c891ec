"""Decoding and encoding beside inference: a read-ahead thread and a write-behind thread.

Both queues are small and bounded, so memory stays bounded however long the video is. Errors in
a thread are re-raised in the caller's thread at its next call, and `close()` stops the thread
without waiting for the rest of the work (Ctrl-C, an error elsewhere).
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")
_END = object()
_POLL = 0.1  # seconds between checks of the stop flag while a queue is full or empty


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ReadAhead(Generic[T]):
    """Iterates `source` in a thread, up to `depth` items ahead of the consumer."""

    def __init__(self, source: Iterable[T], depth: int = 4, name: str = "vsqe-read") -> None:
        self._source = source
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(_Failure(exc))
            return
        self._put(_END)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.exc
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class WriteBehind(Generic[T]):
    """Calls `consume(item)` in a thread for each `put(item)`; at most `depth` items wait."""

    def __init__(self, consume: Callable[[T], None], depth: int = 4, name: str = "vsqe-write") -> None:
        self._consume = consume
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=_POLL)
            except queue.Empty:
                continue
            if item is _END:
                return
            try:
                self._consume(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the producer's thread
                self._error = exc
                return

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, item: T) -> None:
        while True:
            self._raise_error()
            if not self._thread.is_alive():
                raise RuntimeError("the writer thread has stopped")
            try:
                self._queue.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Waits until every item is consumed; raises the consumer's error, if any."""
        while self._thread.is_alive():
            try:
                self._queue.put(_END, timeout=_POLL)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._raise_error()

    def close(self) -> None:
        """Stops at once; items still queued are dropped."""
        self._stop.set()
        self._thread.join()
