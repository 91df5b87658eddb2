"""The frontend's metrics registry, reported in Clipper's GET /metrics JSON shape."""

from __future__ import annotations

import math
import re
import time
import zlib
from collections import deque
from collections.abc import Collection
from typing import Any

_RESERVOIR_SIZE = 4096
_METER_TICK_S = 5.0
_PROMETHEUS_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def increment(self, n: int = 1) -> None:
        self.count += n

    def report(self) -> dict[str, str]:
        return {"count": str(self.count)}


class RatioCounter:
    def __init__(self) -> None:
        self.numerator = 0
        self.denominator = 0

    def increment(self, numerator: int, denominator: int) -> None:
        self.numerator += numerator
        self.denominator += denominator

    def report(self) -> dict[str, str]:
        if self.denominator == 0:
            return {"ratio": "nan"}
        return {"ratio": str(self.numerator / self.denominator)}


class Meter:
    """Events per second: the mean rate and 1, 5 and 15 minute exponentially weighted rates."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._last_tick = self._start
        self._count = 0
        self._uncounted = 0
        self._rates = {60.0: 0.0, 300.0: 0.0, 900.0: 0.0}
        self._initialized = False

    def mark(self, n: int = 1) -> None:
        self._count += n
        self._uncounted += n

    def _tick(self) -> None:
        now = time.monotonic()
        while now - self._last_tick >= _METER_TICK_S:
            instant = self._uncounted / _METER_TICK_S
            self._uncounted = 0
            for window in self._rates:
                if not self._initialized:
                    self._rates[window] = instant
                else:
                    alpha = 1 - math.exp(-_METER_TICK_S / window)
                    self._rates[window] += alpha * (instant - self._rates[window])
            self._initialized = True
            self._last_tick += _METER_TICK_S

    def snapshot(self) -> dict[str, Any]:
        self._tick()
        return {
            "count": self._count,
            "elapsed_s": time.monotonic() - self._start,
            "rates": [self._rates[w] for w in sorted(self._rates)],
        }

    @classmethod
    def merged(cls, parts: list[dict[str, Any]]) -> Meter:
        """The meter of several processes counting the same events: counts and rates add."""
        meter = cls()
        meter._count = sum(int(p["count"]) for p in parts)
        meter._start -= max(float(p["elapsed_s"]) for p in parts)
        for i, window in enumerate(sorted(meter._rates)):
            meter._rates[window] = sum(float(p["rates"][i]) for p in parts)
        meter._initialized = True
        return meter

    def report(self) -> dict[str, str]:
        self._tick()
        elapsed = max(time.monotonic() - self._start, 1e-9)
        return {
            "unit": "events per second",
            "rate": str(self._count / elapsed),
            "rate_1min": str(self._rates[60.0]),
            "rate_5min": str(self._rates[300.0]),
            "rate_15min": str(self._rates[900.0]),
        }


class Histogram:
    """Summary statistics over the most recent samples."""

    def __init__(self, unit: str, samples: list[float] | None = None) -> None:
        self.unit = unit
        self._samples: deque[float] = deque(maxlen=_RESERVOIR_SIZE)
        if samples is not None:
            self._samples = deque(samples, maxlen=max(len(samples), _RESERVOIR_SIZE))

    def insert(self, value: float) -> None:
        self._samples.append(value)

    def snapshot(self) -> dict[str, Any]:
        return {"unit": self.unit, "samples": list(self._samples)}

    def report(self) -> dict[str, str]:
        values = sorted(self._samples)
        n = len(values)
        if n == 0:
            stats = dict.fromkeys(("min", "max", "mean", "std_dev", "p50", "p95", "p99"), 0.0)
        else:
            mean = sum(values) / n
            stats = {
                "min": values[0],
                "max": values[-1],
                "mean": mean,
                "std_dev": math.sqrt(sum((v - mean) ** 2 for v in values) / n),
                "p50": _percentile(values, 0.50),
                "p95": _percentile(values, 0.95),
                "p99": _percentile(values, 0.99),
            }
        return {"unit": self.unit, "size": str(n), **{k: str(v) for k, v in stats.items()}}


def _drop_removed(
    metrics: dict[str, Any], apps: Collection[str], models: Collection[tuple[str, str]]
) -> None:
    """Removes "app:<app>:..." and "model:<name>:<version>:..." entries whose app or model
    version is not listed (names hold no colon: the admin service checks them)."""
    for name in list(metrics):
        kind, _, rest = name.partition(":")
        if kind == "app":
            removed = rest.partition(":")[0] not in apps
        elif kind == "model":
            model, _, rest = rest.partition(":")
            removed = (model, rest.partition(":")[0]) not in models
        else:
            removed = False
        if removed:
            del metrics[name]


def _prometheus_name(name: str, field_name: str) -> str:
    return _PROMETHEUS_UNSAFE.sub("_", f"{name}_{field_name}")


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class MetricsRegistry:
    """Named metrics, created on first use; one registry per frontend, passed to what records."""

    def __init__(self) -> None:
        self._counters: dict[str, Counter] = {}
        self._ratios: dict[str, RatioCounter] = {}
        self._meters: dict[str, Meter] = {}
        self._histograms: dict[str, Histogram] = {}

    def counter(self, name: str) -> Counter:
        if name not in self._counters:
            self._counters[name] = Counter()
        return self._counters[name]

    def ratio(self, name: str) -> RatioCounter:
        if name not in self._ratios:
            self._ratios[name] = RatioCounter()
        return self._ratios[name]

    def meter(self, name: str) -> Meter:
        if name not in self._meters:
            self._meters[name] = Meter()
        return self._meters[name]

    def histogram(self, name: str, unit: str = "microseconds") -> Histogram:
        if name not in self._histograms:
            self._histograms[name] = Histogram(unit)
        return self._histograms[name]

    def retain(self, apps: Collection[str], models: Collection[tuple[str, str]]) -> None:
        """Drops the metrics of every app and model version not among these. They were
        removed from the cluster, and their histograms hold thousands of samples each: in a
        cluster whose apps and versions come and go they would only add up."""
        _drop_removed(self._counters, apps, models)
        _drop_removed(self._ratios, apps, models)
        _drop_removed(self._meters, apps, models)
        _drop_removed(self._histograms, apps, models)

    def prometheus_text(self) -> str:
        """Every numeric field as a gauge, named as Clipper's frontend-exporter named them."""
        gauges = [
            (name, field_name, "NaN" if value == "nan" else value)
            for kind in self.report().values()
            for entry in kind
            for name, fields in entry.items()
            for field_name, value in fields.items()
            if field_name != "unit"
        ]
        # Two metrics whose names differ only in what Prometheus names cannot hold (apps
        # "my-app" and "my_app") would get one name, and a name given twice makes the whole
        # exposition invalid: each of them takes its own name's CRC-32 too.
        owners: dict[str, set[str]] = {}
        for name, field_name, _ in gauges:
            owners.setdefault(_prometheus_name(name, field_name), set()).add(name)
        shared = {name for names in owners.values() if len(names) > 1 for name in names}
        lines = []
        for name, field_name, number in gauges:
            if name in shared:
                field_name = f"{zlib.crc32(name.encode()):08x}_{field_name}"
            metric = _prometheus_name(name, field_name)
            lines.append(f"# TYPE {metric} gauge\n{metric} {number}")
        return "\n".join(lines) + "\n"

    def snapshot(self) -> dict[str, Any]:
        """The raw state, for merging with other processes' (JSON-serializable)."""
        return {
            "counters": {k: v.count for k, v in self._counters.items()},
            "ratios": {k: [v.numerator, v.denominator] for k, v in self._ratios.items()},
            "meters": {k: v.snapshot() for k, v in self._meters.items()},
            "histograms": {k: v.snapshot() for k, v in self._histograms.items()},
        }

    @classmethod
    def merged(cls, snapshots: list[dict[str, Any]]) -> MetricsRegistry:
        """One registry for several frontend processes: counts add, histograms pool samples."""
        registry = cls()
        meters: dict[str, list[dict[str, Any]]] = {}
        histograms: dict[str, tuple[str, list[float]]] = {}
        for snap in snapshots:
            for name, count in snap["counters"].items():
                registry.counter(name).increment(int(count))
            for name, (numerator, denominator) in snap["ratios"].items():
                registry.ratio(name).increment(int(numerator), int(denominator))
            for name, meter in snap["meters"].items():
                meters.setdefault(name, []).append(meter)
            for name, histogram in snap["histograms"].items():
                unit, samples = histograms.setdefault(name, (histogram["unit"], []))
                samples.extend(float(v) for v in histogram["samples"])
        for name, parts in meters.items():
            registry._meters[name] = Meter.merged(parts)
        for name, (unit, samples) in histograms.items():
            registry._histograms[name] = Histogram(unit, samples)
        return registry

    def report(self) -> dict[str, Any]:
        return {
            "counters": [{k: v.report()} for k, v in self._counters.items()],
            "ratio_counters": [{k: v.report()} for k, v in self._ratios.items()],
            "meters": [{k: v.report()} for k, v in self._meters.items()],
            "histograms": [{k: v.report()} for k, v in self._histograms.items()],
        }
