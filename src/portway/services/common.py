"""Helpers every service shares (chat, media)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


async def shielded(*aws: Awaitable[Any]) -> None:
    """Run clean-up to completion even if the surrounding task is being cancelled."""
    await asyncio.shield(asyncio.gather(*aws))
