"""One local media model: loaded once and lazily, run on its own worker threads behind a concurrency limit.

The embeddings, speech and transcription engines are each a `LocalEngine` plus the pure code of their task.
Blocking model calls never touch the event loop: a job runs on the engine's own small thread pool (one thread
per allowed concurrent call), so a slow transcription cannot starve other users of the default executor.

A job's slot is given back when its worker thread has finished, never by the coroutine that started it: a
cancelled or timed-out request sets the job's cancel flag and returns at once, but the model stays busy
until the thread notices the flag (between two sentences, segments or batches), and the limit counts that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from portway.providers.base import FailureKind, UpstreamFailure

M = TypeVar("M")
T = TypeVar("T")

log = logging.getLogger("portway.local")

_DONE = object()  # ends a stream's queue


class MediaInputError(ValueError):
    """The caller's input cannot be served by this local model; `param` names the request field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def unavailable(task: str) -> UpstreamFailure:
    """The engine's packages or weights are missing: a CONNECTION failure, so a fallback target is tried."""
    return UpstreamFailure(FailureKind.CONNECTION, f"local {task} model unavailable: install portway[media]")


class LocalEngine(Generic[M]):
    """Owns one loaded model `M` (built by `load`, a blocking function run on a worker thread)."""

    def __init__(self, task: str, load: Callable[[], M], *, max_concurrency: int = 1) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.task = task
        self.max_concurrency = max_concurrency
        self._load = load
        self._model: M | None = None
        self._loading: asyncio.Future[M] | None = None
        self._slots = asyncio.Semaphore(max_concurrency)
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix=f"portway-{task}")
        self._running: dict[asyncio.Future[Any], threading.Event] = {}
        self._closed = False
        self.peak = 0  # most jobs ever running at once (tests check the limit with it)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def running(self) -> int:
        """Jobs whose worker thread has not finished yet (a cancelled one counts until it has stopped)."""
        return len(self._running)

    async def warm(self) -> None:
        """Loads the model now instead of on the first call."""
        await self._get_model()

    async def run(self, job: Callable[[M, threading.Event], T]) -> T:
        """Runs `job(model, cancel)` on a worker thread once a slot is free, and returns its result."""
        cancel = threading.Event()
        future = await self._start(job, cancel)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()
            raise

    async def stream(self, job: Callable[[M, threading.Event], Iterator[T]]) -> AsyncGenerator[T, None]:
        """Yields the items `job(model, cancel)` produces on its worker thread, each as soon as it exists.

        Closing the iterator early (a client gone) sets the cancel flag; the thread stops at its next item.
        The queue is unbounded: a job's output is bounded by its input (one chunk per sentence of speech).
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def post(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def produce(model: M, flag: threading.Event) -> None:
            try:
                for item in job(model, flag):
                    if flag.is_set():
                        break
                    post(item)
            except Exception as exc:
                post(_Raised(_as_failure(self.task, exc)))
                return
            post(_DONE)

        await self._start(produce, cancel)
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, _Raised):
                    raise item.exc
                yield item
        finally:
            cancel.set()

    async def aclose(self) -> None:
        """Stops taking jobs, flags the running ones and lets the worker threads wind down."""
        if self._closed:
            return
        self._closed = True
        for cancel in self._running.values():
            cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._model = None

    async def _start(
        self, job: Callable[[M, threading.Event], T], cancel: threading.Event
    ) -> asyncio.Future[T]:
        self._check_open()
        await self._slots.acquire()
        try:
            model = await self._get_model()
            self._check_open()
            run = _guarded(self.task, job)
            future = asyncio.get_running_loop().run_in_executor(self._executor, run, model, cancel)
        except BaseException:
            self._slots.release()
            raise
        self._running[future] = cancel
        self.peak = max(self.peak, len(self._running))
        future.add_done_callback(self._finished)
        return future

    def _finished(self, done: asyncio.Future[Any]) -> None:
        self._running.pop(done, None)
        if not done.cancelled():
            done.exception()  # mark retrieved: the awaiting request may be gone (timeout, disconnect)
        self._slots.release()

    async def _get_model(self) -> M:
        if self._model is not None:
            return self._model
        if self._loading is None:
            # One load shared by every concurrent first caller; a failed load is retried by the next call.
            self._loading = asyncio.ensure_future(self._load_once())
            self._loading.add_done_callback(_retrieve)
        return await asyncio.shield(self._loading)

    async def _load_once(self) -> M:
        try:
            started = time.perf_counter()
            try:
                model = await asyncio.get_running_loop().run_in_executor(self._executor, self._load)
            except UpstreamFailure:
                raise
            except Exception as exc:
                log.warning("local %s model failed to load: %s: %s", self.task, type(exc).__name__, exc)
                raise UpstreamFailure(
                    FailureKind.CONNECTION, f"local {self.task} model failed to load"
                ) from exc
            log.info("local %s model ready in %.1f s", self.task, time.perf_counter() - started)
            self._model = model
            return model
        finally:
            self._loading = None

    def _check_open(self) -> None:
        if self._closed:
            raise UpstreamFailure(FailureKind.CONNECTION, f"local {self.task} engine is closed")


def _guarded(task: str, job: Callable[[M, threading.Event], T]) -> Callable[[M, threading.Event], T]:
    """Bad input stays a MediaInputError; any other error of the model becomes a SERVER failure (no trace)."""

    def run(model: M, cancel: threading.Event) -> T:
        try:
            return job(model, cancel)
        except Exception as exc:
            failure = _as_failure(task, exc)
            if failure is exc:
                raise
            raise failure from exc

    return run


def _as_failure(task: str, exc: Exception) -> Exception:
    if isinstance(exc, MediaInputError | UpstreamFailure):
        return exc
    log.warning("local %s call failed: %s: %s", task, type(exc).__name__, exc)
    return UpstreamFailure(FailureKind.SERVER, f"local {task} failed ({type(exc).__name__})")


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


def _retrieve(future: asyncio.Future[Any]) -> None:
    with contextlib.suppress(BaseException):
        future.exception()
