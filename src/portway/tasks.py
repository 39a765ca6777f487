"""asyncio task helpers for every layer (shared like config, errors and settings: nothing of portway)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has ended. How it ended is dropped: a background loop logs
    its own failures, and a worker shutting down must not fail on one."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
