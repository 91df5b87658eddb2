"""A virtual-time simulation of the scheduler on one core shared by the frontend and a replica.

The real ModelQueue and BatchPolicy run on an event loop whose clock only moves when every task
waits, so a 20 s run takes a few seconds and gives the same answer every time. The core is
shared in 1 ms slices between the frontend (a fixed CPU cost per request, served in arrival
order: requests wait unread while it is behind) and the replica (a fixed plus per-item cost per
batch), as Linux shares it between two busy processes. It isolates the scheduler's decisions
from the VM's noise, which in this benchmark's real runs moves goodput by 30% or more.

    python -m bench.simulate --load open:1400 --load closed:64
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.util
import random
import selectors
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import query_frontend
from management.input_types import InputType


def _batching_from_source() -> ModuleType:
    """query_frontend.batching run from its source, under another name: the compiled build
    that `import` finds reads the real clock, which this simulation must replace."""
    name = "query_frontend._batching_simulated"
    source = Path(query_frontend.__file__).with_name("batching.py")
    spec = importlib.util.spec_from_file_location(name, source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


batching = _batching_from_source()

SLICE_S = 0.001


class _Clock:
    now = 0.0

    def monotonic(self) -> float:
        return self.now


class _VirtualSelector(selectors.DefaultSelector):
    """No I/O ever arrives: waiting for it only moves the clock to the next timer."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("every task waits and no timer is due: the simulation is stuck")
        self._clock.now += max(timeout, 0.0)
        return []


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: _Clock) -> None:
        super().__init__(_VirtualSelector(clock))
        self._clock = clock

    def time(self) -> float:
        return self._clock.now


@dataclass
class Costs:
    frontend_s: float = 0.00045  # CPU per request read, parsed and answered
    refusal_share: float = 0.25  # a request refused before its body is parsed
    batch_fixed_s: float = 0.0015
    batch_per_item_s: float = 0.00025
    slo_s: float = 0.050


class _Core:
    """The frontend's work, in arrival order, and the replica's batch, sharing one core."""

    def __init__(self, clock: _Clock) -> None:
        self._clock = clock
        self._frontend: collections.deque[tuple[Callable[[], float], asyncio.Future[None]]]
        self._frontend = collections.deque()
        self._replica: list[Any] | None = None
        self._work = asyncio.Event()

    def read(self, cost: Callable[[], float]) -> asyncio.Future[None]:
        """Done once the frontend has handled the request; its cost is decided when it starts."""
        done = asyncio.get_running_loop().create_future()
        self._frontend.append((cost, done))
        self._work.set()
        return done

    def run_batch(self, cost_s: float) -> asyncio.Future[None]:
        done = asyncio.get_running_loop().create_future()
        self._replica = [cost_s, done]
        self._work.set()
        return done

    async def run(self) -> None:
        turn = 0
        remaining: float | None = None
        while True:
            if not self._frontend and self._replica is None:
                self._work.clear()
                await self._work.wait()
                continue
            turn += 1
            frontend_turn = self._frontend and (self._replica is None or turn % 2 == 0)
            budget = SLICE_S
            if frontend_turn:
                while self._frontend and budget > 1e-12:
                    cost, done = self._frontend[0]
                    if remaining is None:
                        remaining = cost()
                    used = min(budget, remaining)
                    remaining -= used
                    budget -= used
                    await asyncio.sleep(used)
                    if remaining <= 1e-12:
                        self._frontend.popleft()
                        remaining = None
                        done.set_result(None)
            elif self._replica is not None:
                used = min(budget, self._replica[0])
                self._replica[0] -= used
                await asyncio.sleep(used)
                if self._replica[0] <= 1e-12:
                    finished, self._replica = self._replica[1], None
                    finished.set_result(None)


class _Run:
    def __init__(self, clock: _Clock, costs: Costs) -> None:
        self.clock = clock
        self.costs = costs
        self.core = _Core(clock)
        policy = batching.BatchPolicy(-1, max_adaptive_size=256, max_wait_s=0.02)
        self.queue = batching.ModelQueue("m", "1", InputType.FLOATS, policy, max_len=10000)
        self.queue.num_workers = 1
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.sizes: list[int] = []

    async def request(self) -> None:
        arrived = self.clock.now
        deadline = arrived + self.costs.slo_s
        refused = False

        def cost() -> float:
            nonlocal refused
            # Decided when the frontend reads the request, after any backlog, as predict() does.
            if deadline <= self.clock.now or not self.queue.admits(deadline):
                refused = True
                return self.costs.frontend_s * self.costs.refusal_share
            return self.costs.frontend_s

        await self.core.read(cost)
        if refused:
            self.outcomes["refused"] += 1
            # The frontend answers a refusal when its SLO ends, as predict() does.
            await asyncio.sleep(max(0.0, deadline - self.clock.now))
            return
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        # An expiry after the wait gave up is read here, as the frontend's _settle would.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            self.queue.put(b"x", deadline, future)
        except batching.Overloaded:
            self.outcomes["refused"] += 1
            await asyncio.sleep(max(0.0, deadline - self.clock.now))
            return
        await asyncio.wait([future], timeout=max(0.0, deadline - self.clock.now))
        on_time = future.done() and future.exception() is None
        self.outcomes["answered" if on_time else "late"] += 1

    async def replica(self) -> None:
        while True:
            batch = await self.queue.take()
            started = self.clock.now
            await self.core.run_batch(
                self.costs.batch_fixed_s + self.costs.batch_per_item_s * len(batch)
            )
            finished = self.clock.now
            met = finished <= min(q.deadline for q in batch)
            self.queue.policy.observe(len(batch), finished - started, met)
            self.sizes.append(len(batch))
            for query in batch:
                if not query.future.done():
                    query.future.set_result("1")


async def _simulate(clock: _Clock, costs: Costs, load: str, duration_s: float) -> str:
    run = _Run(clock, costs)
    tasks = [asyncio.create_task(run.core.run()), asyncio.create_task(run.replica())]
    kind, _, amount = load.partition(":")
    rng = random.Random(1)

    async def poisson(rate_per_s: float) -> None:
        while True:
            await asyncio.sleep(rng.expovariate(rate_per_s))
            tasks.append(asyncio.create_task(run.request()))

    async def client() -> None:
        while True:
            await run.request()

    if kind == "open":
        tasks.append(asyncio.create_task(poisson(float(amount))))
    elif kind == "closed":
        tasks.extend(asyncio.create_task(client()) for _ in range(int(amount)))
    else:
        raise ValueError(f"a load is open:<rate per s> or closed:<clients>, not {load!r}")
    await asyncio.sleep(2.0)  # the latency model learns
    run.outcomes.clear()
    run.sizes.clear()
    await asyncio.sleep(duration_s)
    for task in tasks:
        task.cancel()
    total = max(sum(run.outcomes.values()), 1)
    mean_size = sum(run.sizes) / max(len(run.sizes), 1)
    late, refused = run.outcomes["late"] / total, run.outcomes["refused"] / total
    return (
        f"{load:>13}  answered on time {run.outcomes['answered'] / duration_s:7.0f}/s"
        f"  late {late:6.1%}  refused {refused:6.1%}  mean batch {mean_size:5.1f}"
    )


def simulate(load: str, costs: Costs, duration_s: float = 20.0) -> str:
    """One load's line of figures: answers on time per second, late and refused shares."""
    clock = _Clock()
    # The queue reads time.monotonic() through its module's `time`: it reads this clock now.
    namespace = vars(batching)
    real_clock = namespace["time"]
    namespace["time"] = clock
    loop = _VirtualLoop(clock)
    try:
        main: Coroutine[Any, Any, str] = _simulate(clock, costs, load, duration_s)
        return loop.run_until_complete(main)
    finally:
        namespace["time"] = real_clock
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Simulates the scheduler on one shared core.")
    parser.add_argument("--load", action="append", help="open:<rate per s> or closed:<clients>")
    parser.add_argument("--duration", type=float, default=20.0, help="simulated seconds")
    parser.add_argument("--slowdown", type=float, default=1.0, help="multiplies every CPU cost")
    args = parser.parse_args()
    base = Costs()
    costs = Costs(
        frontend_s=base.frontend_s * args.slowdown,
        batch_fixed_s=base.batch_fixed_s * args.slowdown,
        batch_per_item_s=base.batch_per_item_s * args.slowdown,
    )
    loads = args.load or ["closed:32", "closed:64", "open:1000", "open:1400", "open:2000"]
    print(
        f"frontend {costs.frontend_s * 1e3:.2f} ms per request; batches "
        f"{costs.batch_fixed_s * 1e3:.2f} ms + {costs.batch_per_item_s * 1e3:.2f} ms per item; "
        f"SLO {costs.slo_s * 1e3:.0f} ms"
    )
    for load in loads:
        print(simulate(load, costs, args.duration))


if __name__ == "__main__":
    main()
