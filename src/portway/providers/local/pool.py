"""A small pool of loaded model instances, one per allowed concurrent generation.

A `llama_cpp.Llama` object is not thread-safe, so a generation owns its instance from `acquire()` until
its worker thread has finished: the slot is given back by the thread's completion, never by the
coroutine that started it (which may have been cancelled or timed out long before).
Instances are loaded lazily, in a worker thread, one load at a time; concurrent first requests share
that single load instead of each loading the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from portway.providers.base import FailureKind, UpstreamFailure
from portway.providers.local.model import LoadedModel, LocalOptions, load_model

T = TypeVar("T")
log = logging.getLogger("portway.local")

CLOSE_GRACE = 5.0  # seconds aclose() waits for running generations to notice their cancel flag


class ModelPool:
    def __init__(self, config: LocalOptions) -> None:
        self._config = config
        self._executor = ThreadPoolExecutor(
            max_workers=config.max_concurrency, thread_name_prefix="portway-local"
        )
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._free: list[LoadedModel] = []
        self._loaded: list[LoadedModel] = []
        self._loading: asyncio.Future[None] | None = None
        self._running: dict[asyncio.Future[Any], threading.Event] = {}
        self._closed = False

    @property
    def loaded(self) -> int:
        return len(self._loaded)

    @property
    def busy(self) -> int:
        """Generations whose worker thread has not finished yet."""
        return len(self._running)

    async def acquire(self) -> LoadedModel:
        """Waits for a free slot and returns an instance (loading one if none is idle)."""
        self._check_open()
        await self._slots.acquire()
        try:
            while not self._free:
                self._check_open()
                await self._grow()
            return self._free.pop()
        except BaseException:
            self._slots.release()
            raise

    def start(self, model: LoadedModel, cancel: threading.Event, job: Callable[[], T]) -> asyncio.Future[T]:
        """Runs `job` on a worker thread; `model`'s slot is released when the job has really finished."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, job)
        self._running[future] = cancel
        future.add_done_callback(lambda done: self._finished(model, done))
        return future

    async def warm(self) -> None:
        self.release(await self.acquire())

    def release(self, model: LoadedModel) -> None:
        if self._closed:
            model.close()
        else:
            self._free.append(model)
        self._slots.release()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for cancel in self._running.values():
            cancel.set()
        if self._running:
            await asyncio.wait(list(self._running), timeout=CLOSE_GRACE)
        for model in self._free:
            model.close()
        self._free.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _check_open(self) -> None:
        if self._closed:
            raise UpstreamFailure(FailureKind.CONNECTION, "local provider is closed")

    def _finished(self, model: LoadedModel, done: asyncio.Future[T]) -> None:
        self._running.pop(done, None)
        if not done.cancelled():
            done.exception()  # mark retrieved: the awaiting request may be gone (timeout, disconnect)
        self.release(model)

    async def _grow(self) -> None:
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load_one())
            self._loading.add_done_callback(_retrieve)
        await asyncio.shield(self._loading)

    async def _load_one(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            path = self._config.resolved_path()
            started = time.perf_counter()
            try:
                model = await loop.run_in_executor(self._executor, load_model, path, self._config)
            except UpstreamFailure as failure:
                log.warning("local model %s not loaded: %s", self._config.model_id, failure.message)
                raise
            self._loaded.append(model)
            log.info(
                "local model %s loaded (%s, n_ctx %d, instance %d of %d) in %.1f s",
                self._config.model_id,
                os.path.basename(path or ""),
                model.n_ctx,
                len(self._loaded),
                self._config.max_concurrency,
                time.perf_counter() - started,
            )
            if self._closed:
                model.close()
            else:
                self._free.append(model)
        finally:
            self._loading = None


def _retrieve(future: asyncio.Future[None]) -> None:
    with contextlib.suppress(BaseException):
        future.exception()
