"""A light asyncio load generator: closed loop at a concurrency, or open loop at a Poisson rate."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

# Turns a response body into (answered, was_default).
Classifier = Callable[[bytes], tuple[bool, bool]]


@dataclass
class RunResult:
    sent: int = 0
    latencies_s: list[float] = field(default_factory=list)
    defaults: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    # Latencies of the answers that were not defaults.
    answered_latencies_s: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def goodput(self) -> float:
        return len(self.answered_latencies_s) / self.elapsed_s if self.elapsed_s else 0.0

    def percentile_ms(self, q: float, answered_only: bool = False) -> float:
        values = sorted(self.answered_latencies_s if answered_only else self.latencies_s)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    @property
    def default_ratio(self) -> float:
        done = len(self.latencies_s)
        return self.defaults / done if done else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "throughput": round(self.throughput, 1),
            "p50_ms": round(self.percentile_ms(0.5), 2),
            "p99_ms": round(self.percentile_ms(0.99), 2),
            "answered_p99_ms": round(self.percentile_ms(0.99, answered_only=True), 2),
            "default_ratio": round(self.default_ratio, 4),
            "errors": self.errors,
            "mean_ms": round(statistics.fmean(self.latencies_s) * 1000, 2)
            if self.latencies_s
            else float("nan"),
        }


def clipper_classifier(body: bytes) -> tuple[bool, bool]:
    doc = orjson.loads(body)
    return True, bool(doc.get("default", False))


def plain_classifier(body: bytes) -> tuple[bool, bool]:
    return True, False


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    classify: Classifier,
    result: RunResult,
    timeout_s: float,
    started: float | None = None,
) -> None:
    """One request; latency counts from `started` (the scheduled arrival in open loop)."""
    started = time.monotonic() if started is None else started
    result.sent += 1
    try:
        async with session.post(
            url,
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            payload = await response.read()
            if response.status != 200:
                result.errors += 1
                return
    except (aiohttp.ClientError, TimeoutError):
        result.errors += 1
        return
    latency = time.monotonic() - started
    _, default = classify(payload)
    result.latencies_s.append(latency)
    if default:
        result.defaults += 1
    else:
        result.answered_latencies_s.append(latency)


async def closed_loop(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    duration_s: float,
    classify: Classifier = clipper_classifier,
    warmup_s: float = 1.0,
    timeout_s: float = 30.0,
) -> RunResult:
    """`concurrency` clients, each sending its next request when the last one is answered."""
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm = RunResult()
        await _loop(session, url, bodies, concurrency, warmup_s, classify, warm, timeout_s)
        result = RunResult()
        started = time.monotonic()
        await _loop(session, url, bodies, concurrency, duration_s, classify, result, timeout_s)
        result.elapsed_s = time.monotonic() - started
        return result


async def _loop(
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[bytes],
    concurrency: int,
    duration_s: float,
    classify: Classifier,
    result: RunResult,
    timeout_s: float,
) -> None:
    end = time.monotonic() + duration_s

    async def client(offset: int) -> None:
        i = offset
        while time.monotonic() < end:
            await _one(session, url, bodies[i % len(bodies)], classify, result, timeout_s)
            i += concurrency

    await asyncio.gather(*(client(i) for i in range(concurrency)))


async def open_loop(
    url: str,
    bodies: list[bytes],
    rate_per_s: float,
    duration_s: float,
    classify: Classifier = clipper_classifier,
    seed: int = 0,
    timeout_s: float = 30.0,
    connections: int = 256,
    warmup_s: float = 1.0,
) -> RunResult:
    """Requests at Poisson arrivals of the given rate, whatever the server's speed.

    A pool of keep-alive clients takes the arrivals in order; each latency counts from the
    scheduled arrival, so a request that waits for a free client counts its wait too. The
    first warmup_s of arrivals (which also open the connections) are sent but not counted.
    """
    rng = random.Random(seed)
    warm, result = RunResult(), RunResult()
    arrivals: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    begin = time.monotonic()
    counted_from = begin + warmup_s
    at, i = begin, 0
    while at < counted_from + duration_s:
        arrivals.put_nowait((i, at))
        at += rng.expovariate(rate_per_s)
        i += 1
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            while not arrivals.empty():
                index, scheduled = arrivals.get_nowait()
                delay = scheduled - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                body = bodies[index % len(bodies)]
                into = result if scheduled >= counted_from else warm
                await _one(session, url, body, classify, into, timeout_s, scheduled)

        await asyncio.gather(*(client() for _ in range(connections)))
        result.elapsed_s = time.monotonic() - counted_from
    return result
