"""The other worker processes sharing this frontend's port, asked for their metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)

SNAPSHOT_PATH = "/internal/metrics-snapshot"


class Peers:
    """Each sibling worker's loopback metrics port; empty when this process serves alone."""

    def __init__(self, ports: list[int], timeout_s: float = 2.0) -> None:
        self.ports = ports
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.ports:
            self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def snapshots(self) -> list[dict[str, Any]]:
        """The metrics of every sibling that answers; one restarting is left out meanwhile."""
        if self._session is None:
            return []
        answers = await asyncio.gather(*(self._snapshot(port) for port in self.ports))
        return [a for a in answers if a is not None]

    async def _snapshot(self, port: int) -> dict[str, Any] | None:
        assert self._session is not None
        try:
            async with self._session.get(f"http://127.0.0.1:{port}{SNAPSHOT_PATH}") as response:
                response.raise_for_status()
                snapshot: dict[str, Any] = await response.json()
                return snapshot
        except (aiohttp.ClientError, TimeoutError) as e:
            logger.warning("worker metrics on port %d unavailable: %s", port, e)
            return None
