"""Waiting on state held elsewhere (Redis, PostgreSQL, a server), never for a fixed time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float, step: float = 0.05
) -> None:
    """Poll `check` until true, or fail naming it (its docstring) after `within` s."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {within}s: {check.__doc__ or check}")
        await asyncio.sleep(step)
