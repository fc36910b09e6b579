"""Dynamic micro-batching: concurrent requests share one analyzer call on a worker thread.

:class:`MicroBatcher` owns one worker thread. :meth:`MicroBatcher.submit` queues an array of
``rows`` samples and returns a :class:`concurrent.futures.Future`. The worker takes the oldest
request and every request already waiting; unless that fills ``max_batch`` rows, it sleeps out
``max_delay_ms`` from the first one and takes what arrived meanwhile (up to ``max_batch`` rows),
concatenates them, calls ``fn`` once, and hands each request exactly its own
rows of every output. A request is never split; a request larger than ``max_batch`` runs alone.
A request whose future was cancelled (its client went away) is dropped before the call. If ``fn``
raises, every request of that batch gets the exception.

:meth:`MicroBatcher.submit_async` is the event loops' form: it returns an :class:`asyncio.Future`
of the calling loop, and the worker settles all of a batch's futures of one loop with a single
``call_soon_threadsafe``. Why: ``asyncio.wrap_future`` on :meth:`submit`'s future wakes the loop
once per request (a self-pipe write and read each, plus a chained callback); under load the
servers' event loops are the bottleneck, and one wake-up per batch leaves them that much more time.

Why the worker sleeps the window out instead of waiting on the queue for each next request: a
timed ``queue.get`` wakes the worker once per arriving request, and each wake-up has to win the
GIL back from the event loop that is busy receiving the next requests. Under load (gRPC at
concurrency 16-64 on 2 cores) those hand-overs cost the loop more than the batch itself; one
sleep per batch also yields larger batches. The price: a batch that fills up during the window
still waits the window out; as before, no batch waits more than ``max_delay_ms`` for its first request.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

__all__ = ["MicroBatcher", "BatcherClosed"]

BatchFn = Callable[[np.ndarray], Sequence[np.ndarray]]


class BatcherClosed(RuntimeError):
    """The batcher was closed (server shutting down); the request was not run."""


@dataclass
class _Item:
    x: np.ndarray
    future: Future | asyncio.Future
    loop: asyncio.AbstractEventLoop | None = None  # set: ``future`` is an asyncio future of this loop

    def claim(self) -> bool:
        """False when the caller cancelled (drop the request); a thread future can no longer be cancelled after."""
        if self.loop is None:
            return self.future.set_running_or_notify_cancel()  # type: ignore[union-attr]
        return not self.future.cancelled()


def _settle(pairs: list[tuple[asyncio.Future, object]]) -> None:
    """On the loop's thread: resolve each future with its result, or its exception (a BaseException)."""
    for fut, res in pairs:
        if fut.done():  # cancelled meanwhile
            continue
        if isinstance(res, BaseException):
            fut.set_exception(res)
        else:
            fut.set_result(res)


_STOP = object()


class MicroBatcher:
    """Merge concurrent calls of ``fn`` into batches on one worker thread.

    Args:
        fn: maps a batch ``(rows, ...)`` to a sequence of arrays whose first dimension is ``rows``.
        max_batch: most rows merged into one call (>= 1).
        max_delay_ms: longest wait for more requests after the first one of a batch (>= 0).
        on_batch: called as ``on_batch(rows, requests)`` after each successful call (metrics).
        name: the worker thread's name.
    """

    def __init__(self, fn: BatchFn, *, max_batch: int = 32, max_delay_ms: float = 2.0,
                 on_batch: Callable[[int, int], None] | None = None, name: str = "privsplit-batcher") -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        if not max_delay_ms >= 0:
            raise ValueError(f"max_delay_ms must be >= 0, got {max_delay_ms!r}")
        self.fn, self.max_batch, self.max_delay = fn, max_batch, float(max_delay_ms) / 1000.0
        self.on_batch, self.name = on_batch, name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: object | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker thread (idempotent; :meth:`submit` calls it)."""
        with self._lock:
            if self._closed:
                raise BatcherClosed("the batcher is closed; create a new one")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish the batch in progress, fail queued requests with :class:`BatcherClosed`, stop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout)
        self._fail_queued()

    @property
    def running(self) -> bool:
        """True while the worker thread runs and the batcher is not closed."""
        return self._thread is not None and self._thread.is_alive() and not self._closed

    def __enter__(self) -> MicroBatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ use
    def submit(self, x: np.ndarray) -> Future:
        """Queue ``x`` (``(rows, ...)``); the future resolves to ``fn``'s outputs for these rows."""
        future: Future = Future()
        self._enqueue(_Item(x, future))
        return future

    def submit_async(self, x: np.ndarray) -> asyncio.Future:
        """:meth:`submit` for a coroutine of a running event loop: ``await batcher.submit_async(x)``."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._enqueue(_Item(x, future, loop))
        return future

    def _enqueue(self, item: _Item) -> None:
        if item.x.ndim < 1 or item.x.shape[0] < 1:
            raise ValueError(f"submit needs an array with at least one row, got shape {item.x.shape}")
        self.start()
        self._queue.put(item)

    def __call__(self, x: np.ndarray, timeout: float | None = None) -> list[np.ndarray]:
        """Blocking :meth:`submit`."""
        return self.submit(x).result(timeout)

    # ------------------------------------------------------------------ worker
    def _next(self, block: bool) -> object:
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        return self._queue.get() if block else self._queue.get_nowait()

    def _collect(self) -> tuple[list[_Item], bool]:
        first = self._next(True)
        if first is _STOP:
            return [], True
        assert isinstance(first, _Item)
        batch, deadline = [first], time.monotonic() + self.max_delay
        rows = self._take_waiting(batch, first.x.shape[0])
        if rows < self.max_batch and self._pending is None and (left := deadline - time.monotonic()) > 0:
            time.sleep(left)  # one wake-up per batch (see the module docstring)
            self._take_waiting(batch, rows)
        return batch, False

    def _take_waiting(self, batch: list[_Item], rows: int) -> int:
        """Move queued requests into ``batch`` while they fit (the first that does not becomes pending)."""
        while rows < self.max_batch:
            try:
                nxt = self._next(False)
            except queue.Empty:
                break
            if nxt is _STOP or (isinstance(nxt, _Item) and rows + nxt.x.shape[0] > self.max_batch):
                self._pending = nxt
                break
            assert isinstance(nxt, _Item)
            batch.append(nxt)
            rows += nxt.x.shape[0]
        return rows

    def _run(self) -> None:
        while True:
            batch, stop = self._collect()
            if stop:
                return
            live = [it for it in batch if it.claim()]
            if live:
                self._run_batch(live)

    def _run_batch(self, batch: list[_Item]) -> None:
        try:
            x = batch[0].x if len(batch) == 1 else np.concatenate([it.x for it in batch])
            outputs = [np.asarray(o) for o in self.fn(x)]
            rows = x.shape[0]
            for o in outputs:
                if o.shape[:1] != (rows,):
                    raise RuntimeError(f"batch function returned shape {o.shape} for {rows} rows")
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            self._deliver([(it, exc) for it in batch])
            return
        results, start = [], 0
        for it in batch:
            n = it.x.shape[0]
            results.append((it, [o[start:start + n].copy() for o in outputs]))
            start += n
        self._deliver(results)
        if self.on_batch is not None:
            try:
                self.on_batch(rows, len(batch))
            except Exception:  # noqa: BLE001 - metrics must never break serving
                pass

    @staticmethod
    def _deliver(results: list[tuple[_Item, object]]) -> None:
        """Hand each item its result or exception: thread futures directly, asyncio futures with one
        ``call_soon_threadsafe`` per loop (see the module docstring)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, object]]] = {}
        for it, res in results:
            if it.loop is not None:
                by_loop.setdefault(it.loop, []).append((it.future, res))  # type: ignore[arg-type]
            elif isinstance(res, BaseException):
                it.future.set_exception(res)
            else:
                it.future.set_result(res)
        for loop, pairs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, pairs)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

    def _fail_queued(self) -> None:
        items = [self._pending] if self._pending is not None else []
        self._pending = None
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        closed = BatcherClosed("the server is shutting down; retry")
        self._deliver([(it, closed) for it in items if isinstance(it, _Item) and it.claim()])
