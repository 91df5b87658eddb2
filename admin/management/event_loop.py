"""The event loop a service process runs on, by name (its settings' event_loop)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

EventLoopName = Literal["uvloop", "asyncio"]


def loop_factory(name: EventLoopName) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop runs the loop itself in C; "asyncio" is the standard library's loop."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop
