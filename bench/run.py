"""Runs every workload against this system and its alternatives, side by side, and prints a table.

    bench/run [--workloads noop,mlp,efficientnet] [--duration 5] [--server-cpus 1]
              [--mlp-runtime onnx|torch] [--open-repeats 1] [--replica-threads N]
              [--rounds 1]

Servers (ours, the echo baseline, FastAPI+uvicorn, MLServer, BentoML) run on --server-cpus,
and the load generator on the other cores (on the same ones when no core is left over). The
limit (the model called in-process at its best batch size) is measured on the server cores
too. Peers run from the venvs that bench/setup makes.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests

from bench import workloads
from bench.loadgen import (
    JSON,
    RunResult,
    clipper_classifier,
    closed_loop,
    open_loop,
    plain_classifier,
)

ROOT = Path(__file__).resolve().parents[1]
VENVS = Path(os.environ.get("BENCH_VENVS", "/opt/bench-venvs"))
CONCURRENCY = {"noop": [1, 8, 32, 64], "mlp": [1, 8, 32, 64], "efficientnet": [1, 4, 16]}
LOAD_FRACTIONS = [0.5, 0.8, 1.0, 1.2]
LIMIT_WARM_UP_CALLS = 3
OCTET_STREAM = "application/octet-stream"
SLO_MICROS = {"noop": 1_000_000, "mlp": 50_000, "efficientnet": 500_000}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    url: str
    bodies: list[bytes]
    classify: Callable[[bytes], tuple[bool, bool]]
    stop: Callable[[], None]
    pids: Callable[[], list[int]]
    # Our model's counters so far, by the last part of their names (batches, batched_queries,
    # num_predictions for its answers, overloaded, expired), and "received": the app's queries.
    counters: Callable[[], dict[str, float]] | None = None
    notes: str = ""
    content_type: str = JSON


# Our defaults by cause, from the frontend's counters, and what the table calls each. "other"
# is every default left: mostly queries sent to a replica and not back in time. It is not the
# late_answers counter: an answer a little past its deadline may still reach its client in time.
DEFAULT_CAUSES = {
    "overloaded": "refused as overloaded",
    "expired": "expired in the queue",
    "other": "other (sent, not back in time)",
}


@dataclass
class Measured:
    """One run: its result, the server's CPU use in cores, and for ours the mean batch size
    and the share of the queries the frontend received that got a default for each cause
    (DEFAULT_CAUSES), counted over the run and its warm-up."""

    result: RunResult
    cpu: float
    batch: float | None = None
    causes: dict[str, float] | None = None


@dataclass
class Row:
    workload: str
    server: str
    load: str
    result: dict[str, Any]
    batch: float | None
    cpu: float
    extra: dict[str, Any] = field(default_factory=dict)


def _wait_http(url: str, timeout_s: float = 120.0, ready_status: int | None = None) -> None:
    """Waits for any answer from url, or for one with ready_status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = requests.get(url, timeout=1).status_code
            if ready_status is None or status == ready_status:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for p in [process, *process.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


# Servers


def _deploy_ours(conn: Any, workload: str, replica_threads: int | None) -> list[bytes]:
    """Deploys the workload's model on our cluster; returns the request bodies.

    replica_threads: the framework's intra-op threads in the replica (ONNX and TorchScript);
    None leaves the replica's default, one per server core.
    """
    from clipper_admin.deployers import onnx as onnx_deployer
    from clipper_admin.deployers import python as python_deployer
    from clipper_admin.deployers import torchscript
    from model_containers.image import LITE_MEAN, LITE_STD, ImagePreprocessing

    slo = SLO_MICROS[workload]
    if workload == "noop":
        python_deployer.create_endpoint(
            conn, "noop", "doubles", lambda xs: [1] * len(xs), slo_micros=slo
        )
        return workloads.encode(workloads.noop_bodies())
    if workload == "mlp" and os.environ.get(workloads.MLP_ONNX_ENV):
        onnx_deployer.create_endpoint(
            conn, "mlp", "floats", os.environ[workloads.MLP_ONNX_ENV], output="argmax",
            slo_micros=slo, intra_op_threads=replica_threads,
        )  # fmt: skip
        return workloads.encode(workloads.mlp_bodies())
    if workload == "mlp":
        model = workloads.build_mlp()
        python_deployer.create_endpoint(
            conn, "mlp", "floats", lambda xs: workloads.mlp_predict(model, xs), slo_micros=slo
        )
        return workloads.encode(workloads.mlp_bodies())
    torchscript.create_endpoint(
        conn, "efficientnet", "bytes", workloads.build_efficientnet(), slo_micros=slo,
        image=ImagePreprocessing(mean=LITE_MEAN, std=LITE_STD), output="argmax",
        intra_op_threads=replica_threads,
    )  # fmt: skip
    return workloads.encode(workloads.jpeg_bodies())


def start_ours(workload: str, replica_threads: int | None = None, binary: bool = False) -> Server:
    """Our cluster; with binary, its requests are application/octet-stream bodies (the same
    inputs as the JSON ones), as "ours-binary"."""
    from clipper_admin import ClipperConnection, LocalContainerManager

    cluster_dir = tempfile.mkdtemp(prefix="bench-")
    conn = ClipperConnection(
        LocalContainerManager(
            "bench", cluster_dir, clipper_query_port=0, clipper_management_port=0, redis_port=0
        )
    )
    # No prediction cache: the request bodies repeat, and none of the peers has one.
    conn.start_clipper(cache_size=0)
    try:
        bodies = _deploy_ours(conn, workload, replica_threads)
        if binary:
            bodies = workloads.encode_binary(workload, [json.loads(b) for b in bodies])
    except BaseException:
        conn.stop_all(graceful=False)
        shutil.rmtree(cluster_dir, ignore_errors=True)
        raise
    slo = SLO_MICROS[workload]
    app = workload
    query = conn.get_query_addr()

    def pids() -> list[int]:
        records = Path(cluster_dir).glob("**/*.json")
        found = []
        for path in records:
            try:
                found.append(int(json.loads(path.read_text())["pid"]))
            except (KeyError, ValueError, TypeError):
                continue
        return found

    def counters() -> dict[str, float]:
        metrics = requests.get(f"http://{query}/metrics", timeout=5).json()
        counts = {name: float(v["count"]) for e in metrics["counters"] for name, v in e.items()}
        prefix = f"model:{app}:1:"
        found = {n.removeprefix(prefix): c for n, c in counts.items() if n.startswith(prefix)}
        found["received"] = counts.get(f"app:{app}:num_predictions", 0.0)
        return found

    def stop() -> None:
        conn.stop_all(graceful=False)
        shutil.rmtree(cluster_dir, ignore_errors=True)

    if binary:
        return Server(
            "ours-binary", f"http://{query}/{app}/predict", bodies, clipper_classifier, stop,
            pids, counters, f"as ours, with {OCTET_STREAM} bodies", OCTET_STREAM,
        )  # fmt: skip
    return Server(
        "ours", f"http://{query}/{app}/predict", bodies, clipper_classifier, stop, pids,
        counters, f"adaptive batching, SLO {slo / 1000:.0f} ms, no cache",
    )  # fmt: skip


def _start_process(argv: list[str], url_check: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_http(url_check)
    except RuntimeError:
        process.kill()
        stderr = process.stderr.read().decode() if process.stderr else ""
        raise RuntimeError(f"{argv} failed: {stderr[-2000:]}") from None
    return process


def _stopper(process: subprocess.Popen[bytes]) -> Callable[[], None]:
    def stop() -> None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()

    return stop


def start_echo(workload: str) -> Server:
    port = _free_port()
    process = _start_process(
        [sys.executable, "bench/echo_server.py", str(port)], f"http://127.0.0.1:{port}/"
    )
    bodies = workloads.noop_bodies() if workload == "noop" else workloads.mlp_bodies()
    return Server(
        "echo", f"http://127.0.0.1:{port}/noop/predict", workloads.encode(bodies),
        plain_classifier, _stopper(process), lambda: [process.pid],
        notes="bare aiohttp server: parses the JSON body, answers its input's length",
    )  # fmt: skip


def start_naive(workload: str) -> Server:
    python = VENVS / "naive" / "bin" / "python"
    port = _free_port()
    process = _start_process(
        [str(python), "bench/naive_server.py", workload, str(port)], f"http://127.0.0.1:{port}/"
    )
    bodies = {
        "noop": workloads.noop_bodies,
        "mlp": workloads.mlp_bodies,
        "efficientnet": workloads.jpeg_bodies,
    }[workload]()
    return Server(
        "fastapi-naive", f"http://127.0.0.1:{port}/{workload}/predict", workloads.encode(bodies),
        plain_classifier, _stopper(process), lambda: [process.pid],
        notes="FastAPI+uvicorn, 1 worker, model per request",
    )  # fmt: skip


def start_mlserver(workload: str) -> Server:
    python = VENVS / "mlserver" / "bin" / "python"
    home = Path(tempfile.mkdtemp(prefix="mlserver-"))
    http_port, grpc_port = _free_port(), _free_port()
    runtime = {"noop": "NoopRuntime", "mlp": "MlpRuntime", "efficientnet": "EfficientNetRuntime"}
    (home / "settings.json").write_text(json.dumps({
        "http_port": http_port, "grpc_port": grpc_port, "metrics_endpoint": None,
        "parallel_workers": 0, "debug": False,
    }))  # fmt: skip
    model_dir = home / workload
    model_dir.mkdir()
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": workload, "implementation": f"bench.mlserver_runtime.{runtime[workload]}",
        "max_batch_size": 64, "max_batch_time": 0.005,
    }))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT}/admin:{ROOT}/protos"}
    process = subprocess.Popen(
        [str(python.parent / "mlserver"), "start", str(home)], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _wait_http(f"http://127.0.0.1:{http_port}/v2/health/ready")
    if workload == "efficientnet":
        inputs = [b["input"] for b in workloads.jpeg_bodies()]
        bodies = [
            {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [s]}]}
            for s in inputs
        ]
    else:
        raw = workloads.noop_bodies() if workload == "noop" else workloads.mlp_bodies()
        bodies = [
            {"inputs": [{"name": "x", "shape": [1, len(b["input"])], "datatype": "FP32",
                         "data": b["input"]}]}
            for b in raw
        ]  # fmt: skip
    return Server(
        "mlserver", f"http://127.0.0.1:{http_port}/v2/models/{workload}/infer",
        workloads.encode(bodies), plain_classifier, _stopper(process), lambda: [process.pid],
        notes="MLServer 1.7.1, adaptive batching (max 64, 5 ms), parallel_workers 0",
    )  # fmt: skip


def start_bentoml(workload: str) -> Server:
    venv_bin = VENVS / "bentoml" / "bin"
    port = _free_port()
    service = {"noop": "Noop", "mlp": "Mlp", "efficientnet": "EfficientNet"}[workload]
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}:{ROOT}/admin:{ROOT}/protos",
        "BENTOML_HOME": tempfile.mkdtemp(prefix="bentoml-"),
    }
    process = subprocess.Popen(
        [str(venv_bin / "bentoml"), "serve", f"bench.bento_service:{service}", "--port", str(port),
         "--host", "127.0.0.1"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/readyz", ready_status=200)
    except RuntimeError:
        process.kill()
        raise
    raw = {
        "noop": workloads.noop_bodies,
        "mlp": workloads.mlp_bodies,
        "efficientnet": workloads.jpeg_bodies,
    }[workload]()
    # A batchable API takes a batch per request: each request carries a batch of one.
    bodies = [{"input": [b["input"]]} for b in raw]

    def pids() -> list[int]:
        return [process.pid]  # its workers are children, counted with it

    return Server(
        "bentoml", f"http://127.0.0.1:{port}/predict", workloads.encode(bodies), plain_classifier,
        _stopper(process), pids,
        notes="BentoML 1.4.39, 1 worker, adaptive batching (max 64, default max_latency_ms)",
    )  # fmt: skip


# The limit


def measure_limit(workload: str, cpus: set[int], seconds: float) -> dict[str, Any]:
    """The model called in-process at its best batch size, on the server cores."""
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    # PyTorch sized its thread pool when this process first imported it (to build the MLP),
    # from the cores it could use then: two threads on one core ran EfficientNet 50x slower.
    torch_threads = _set_torch_threads(len(cpus))
    try:
        if workload == "noop":
            return {"throughput": float("inf"), "best_batch": None}
        if workload == "mlp":
            model = workloads.load_mlp()
            rng = np.random.default_rng(0)

            def run(n: int) -> None:
                workloads.mlp_predict(model, rng.random((n, workloads.MLP_INPUT)))

            sizes = [1, 8, 16, 32, 64, 128, 256]
        else:
            import torch  # imported first here, it sizes its pool from the pinned cores

            program = workloads.build_efficientnet()

            def run(n: int) -> None:
                with torch.inference_mode():
                    program(torch.zeros(n, 3, 224, 224))

            sizes = [1, 2, 4, 8]
        best = (0.0, 1)
        by_batch: dict[int, float] = {}
        for n in sizes:
            # TorchScript profiles a shape in its first call, which took EfficientNet twice as
            # long as the calls after it (73 against 31 to 43 ms at batch 1).
            for _ in range(LIMIT_WARM_UP_CALLS):
                run(n)
            count, started = 0, time.monotonic()
            while time.monotonic() - started < seconds / len(sizes):
                run(n)
                count += n
            by_batch[n] = count / (time.monotonic() - started)
            best = max(best, (by_batch[n], n))
        return {"throughput": best[0], "best_batch": best[1], "by_batch": by_batch}
    finally:
        if torch_threads:
            _set_torch_threads(torch_threads)
        os.sched_setaffinity(0, own)


def limit_at_batch(by_batch: dict[int, float], size: float) -> float | None:
    """The in-process rate at a batch size between two measured ones: a batch's time is taken
    as linear in its size between them (a fixed cost plus a cost per query), so the rate is
    the size over that time. None outside the measured sizes."""
    sizes = sorted(by_batch)
    if not sizes or not sizes[0] <= size <= sizes[-1]:
        return None
    if size in by_batch:
        return by_batch[int(size)]
    above = next(n for n in sizes if n > size)
    below = max(n for n in sizes if n < size)
    time_below, time_above = below / by_batch[below], above / by_batch[above]
    time_s = time_below + (time_above - time_below) * (size - below) / (above - below)
    return size / time_s


def _set_torch_threads(threads: int) -> int:
    """Sets PyTorch's intra-op threads if it is imported; returns the number it had, or 0."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    before = int(torch.get_num_threads())
    torch.set_num_threads(threads)
    return before


# Runs


def _run(server: Server, kind: str, value: float, duration_s: float) -> Measured:
    """One run of the load generator: closed loop with `value` clients, or open at `value`/s."""
    before = _cpu_seconds(server.pids())
    counted_before = server.counters() if server.counters else None
    started = time.monotonic()
    if kind == "closed":
        result = asyncio.run(
            closed_loop(
                server.url, server.bodies, int(value), duration_s, server.classify,
                content_type=server.content_type,
            )
        )  # fmt: skip
    else:
        result = asyncio.run(
            open_loop(
                server.url, server.bodies, value, duration_s, server.classify,
                content_type=server.content_type,
            )
        )  # fmt: skip
    cpu = (_cpu_seconds(server.pids()) - before) / (time.monotonic() - started)
    if server.counters is None or counted_before is None:
        return Measured(result, cpu)
    counted = server.counters()

    def added(name: str) -> float:
        return counted.get(name, 0.0) - counted_before.get(name, 0.0)

    batch = added("batched_queries") / max(added("batches"), 1.0)
    received = added("received")
    if received <= 0:
        return Measured(result, cpu, batch)
    shed = {"overloaded": added("overloaded"), "expired": added("expired")}
    shed["other"] = max(received - added("num_predictions") - sum(shed.values()), 0.0)
    return Measured(result, cpu, batch, {name: n / received for name, n in shed.items()})


def _open_loop_rank(summary: dict[str, Any]) -> tuple[float, float]:
    """How open-loop runs at one load are ordered to pick the median: by their default ratio,
    then by the p99 of their answers."""
    return summary["default_ratio"], summary["answered_p99_ms"]


def _load_key(load: str) -> str:
    """A row's load without its rate: "80% (843/s)" is "80%" whatever the round's capacity."""
    return load.split(" (")[0]


def median_run(runs: Sequence[Measured], slo_s: float) -> tuple[Measured, str]:
    """Of repeated runs at one load, the median by default ratio (then by the p99 of answers),
    and the spread over all of them of both and of the answers within the SLO."""
    keyed = []
    for run in runs:
        summary = run.result.summary()  # sorts every latency: once per run
        keyed.append((_open_loop_rank(summary), run))
    keyed.sort(key=lambda k: k[0])
    defaults = [key[0] for key, _ in keyed]
    p99s = [key[1] for key, _ in keyed]
    within = [run.result.answered_within_per_s(slo_s) for _, run in keyed]
    spread = (
        f"defaults {min(defaults):.2%}-{max(defaults):.2%}, "
        f"p99 of answers {min(p99s):.1f}-{max(p99s):.1f} ms, "
        f"answers within the SLO {min(within):.0f}-{max(within):.0f}/s over {len(runs)} runs"
    )
    return keyed[(len(keyed) - 1) // 2][1], spread


def bench_server(
    workload: str,
    start: Callable[[str], Server],
    server_cpus: set[int],
    duration_s: float,
    open_repeats: int = 1,
) -> list[Row]:
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, server_cpus)  # what starts now inherits the server cores
    try:
        server = start(workload)
    finally:
        os.sched_setaffinity(0, own - server_cpus or own)
    rows = []
    # Our app's SLO, applied to every server's answers alike: only ours sheds, but a late
    # answer from any of them is one the SLO would not have counted.
    slo_s = SLO_MICROS[workload] / 1e6
    try:
        capacity = 0.0
        for concurrency in CONCURRENCY[workload]:
            measured = _run(server, "closed", concurrency, duration_s)
            result = measured.result
            rows.append(Row(workload, server.name, f"c={concurrency}", result.summary(),
                            measured.batch, measured.cpu, _extra(measured, slo_s)))  # fmt: skip
            capacity = max(capacity, result.goodput)
            print(f"  {server.name:14} c={concurrency:<4} {result.summary()}", flush=True)
        for fraction in LOAD_FRACTIONS:
            rate = capacity * fraction
            label = f"{fraction:.0%} ({rate:.0f}/s)"
            # One open-loop run can land in a burst of the VM's noise: with repeats, the row
            # is the median run and the spread is kept.
            runs = []
            for _ in range(open_repeats):
                runs.append(_run(server, "open", rate, duration_s))
                print(f"  {server.name:14} {label:16} {runs[-1].result.summary()}", flush=True)
            measured, spread = median_run(runs, slo_s)
            extra = _extra(measured, slo_s)
            if open_repeats > 1:
                extra["spread"] = spread
            rows.append(Row(workload, server.name, label, measured.result.summary(),
                            measured.batch, measured.cpu, extra))  # fmt: skip
    finally:
        server.stop()
    return rows


def _extra(measured: Measured, slo_s: float) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "goodput": measured.result.goodput,
        "in_slo": measured.result.answered_within_per_s(slo_s),
    }
    if measured.causes is not None:
        extra["causes"] = measured.causes
    return extra


def _cpu_per_answer(row: Row) -> float:
    """Core-seconds the server spent per answer it gave."""
    return row.cpu / max(float(row.extra["goodput"]), 1e-9)


def _best_on_curve(rows: Sequence[Row], workload: str) -> dict[str, Row]:
    """Each server's closed-loop row with the most answers/s for this workload."""
    best: dict[str, Row] = {}
    for r in rows:
        on_curve = r.workload == workload and r.load.startswith("c=")
        if on_curve and (
            r.server not in best or r.extra["goodput"] > best[r.server].extra["goodput"]
        ):
            best[r.server] = r
    return best


def combine_rounds(rounds: Sequence[list[Row]]) -> tuple[list[Row], list[str]]:
    """The rows of rounds run one after another (each server in turn, every round), merged: per
    server and load, the median round's row with the spread over the rounds; and, per round,
    ours against each baseline measured minutes apart in that round.

    On a VM whose speed drifts, two servers measured far apart in time compare the VM's phases
    as much as the servers; the ratio within each round does not.
    """
    if len(rounds) == 1:
        return list(rounds[0]), []
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for round_rows in rounds:
        for r in round_rows:
            groups.setdefault((r.workload, r.server, _load_key(r.load)), []).append(r)
    merged = []
    for (_, _, load), group in groups.items():
        closed_loop = load.startswith("c=")
        if closed_loop:
            ordered = sorted(group, key=lambda r: r.extra["goodput"])
        else:
            ordered = sorted(group, key=lambda r: _open_loop_rank(r.result))
        row = ordered[(len(ordered) - 1) // 2]
        rates = [r.extra["goodput"] for r in group]
        spread = f"answers/s {min(rates):.0f}-{max(rates):.0f}"
        if not closed_loop:
            defaults = [r.result["default_ratio"] for r in group]
            spread += f", defaults {min(defaults):.2%}-{max(defaults):.2%}"
        extra = {**row.extra, "rounds": f"{spread} over {len(group)} rounds"}
        merged.append(
            Row(row.workload, row.server, row.load, row.result, row.batch, row.cpu, extra)
        )
    paired: list[str] = []
    for workload in dict.fromkeys(r.workload for round_rows in rounds for r in round_rows):
        ratios: dict[str, list[float]] = {}
        added_ms: list[float] = []
        for round_rows in rounds:
            best = _best_on_curve(round_rows, workload)
            if "ours" not in best:
                continue
            for name, other in best.items():
                if name != "ours":
                    ratios.setdefault(name, []).append(
                        best["ours"].extra["goodput"] / other.extra["goodput"]
                    )
            c1 = {r.server: r for r in round_rows if r.workload == workload and r.load == "c=1"}
            if "ours" in c1 and "echo" in c1:
                added_ms.append(c1["ours"].result["p50_ms"] - c1["echo"].result["p50_ms"])
        for name, values in ratios.items():
            listed = ", ".join(f"x{v:.2f}" for v in values)
            paired.append(
                f"  {workload}: ours/{name} per round: answers/s {listed} "
                f"(median x{statistics.median(values):.2f})"
            )
        if added_ms:
            listed = ", ".join(f"{v:+.2f}" for v in added_ms)
            paired.append(
                f"  {workload}: added p50 latency over echo at c=1 per round: {listed} ms "
                f"(median {statistics.median(added_ms):+.2f})"
            )
    return merged, paired


def print_table(
    rows: list[Row], limits: dict[str, dict[str, Any]], paired: Sequence[str] = ()
) -> None:
    header = (
        f"{'workload':12} {'server':14} {'load':16} {'answers/s':>10} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'ans p99':>8} {'default':>8} {'in SLO/s':>9} {'batch':>6} {'cpu':>5}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        batch = f"{r.batch:.1f}" if r.batch is not None and r.batch == r.batch else "-"
        print(
            f"{r.workload:12} {r.server:14} {r.load:16} {r.extra['goodput']:10.1f} "
            f"{r.result['p50_ms']:8.2f} {r.result['p99_ms']:8.2f} "
            f"{r.result['answered_p99_ms']:8.2f} {r.result['default_ratio']:8.2%} "
            f"{r.extra['in_slo']:9.1f} {batch:>6} {r.cpu:5.2f}"
        )
    spreads = [r for r in rows if "spread" in r.extra]
    if spreads:
        print("\nOpen-loop rows are the median of repeated runs; the spread over them:")
        for r in spreads:
            print(f"  {r.workload:12} {r.server:14} {r.load:16} {r.extra['spread']}")
    caused = [r for r in rows if any(r.extra.get("causes", {}).values())]
    if caused:
        print(
            "\nOur defaults by cause, as shares of the queries the frontend received (its "
            "counters,\nover each run and its 1 s warm-up):"
        )
        for r in caused:
            shares = r.extra["causes"]
            causes = ", ".join(f"{label} {shares[n]:.2%}" for n, label in DEFAULT_CAUSES.items())
            print(f"  {r.workload:12} {r.server:14} {r.load:16} {causes}")
    rounds = [r for r in rows if "rounds" in r.extra]
    if rounds:
        print("\nEach row is the median round's; the spread over the rounds:")
        for r in rounds:
            print(f"  {r.workload:12} {r.server:14} {_load_key(r.load):16} {r.extra['rounds']}")
    print("\nRatios of ours to each baseline, at saturation (best answers/s over the curve):")
    for workload in sorted({r.workload for r in rows}):
        best = _best_on_curve(rows, workload)
        if "ours" not in best:
            continue
        ours = best["ours"]
        limit = limits.get(workload, {})
        if limit.get("throughput", float("inf")) != float("inf"):
            print(
                f"  {workload}: limit (in-process, batch {limit['best_batch']}) "
                f"{limit['throughput']:.1f}/s; ours/limit = "
                f"{ours.extra['goodput'] / limit['throughput']:.2f}"
            )
            if "echo" in best:
                # On one core, any HTTP server pays at least the echo's cost per request on
                # top of the model's: the best any of them could do with these bodies.
                echo_rate = best["echo"].extra["goodput"]
                bound = 1 / (1 / echo_rate + 1 / limit["throughput"])
                print(
                    f"  {workload}: HTTP+JSON floor (bare echo, same bodies) {echo_rate:.1f}/s; "
                    f"so at most {bound:.1f}/s = {bound / limit['throughput']:.2f}x the limit "
                    f"for any HTTP server on these cores; ours/that = "
                    f"{ours.extra['goodput'] / bound:.2f}"
                )
            if "ours-binary" in best:
                print(
                    f"  {workload}: ours-binary ({OCTET_STREAM} bodies, not JSON)/limit = "
                    f"{best['ours-binary'].extra['goodput'] / limit['throughput']:.2f}"
                )
            alone = (
                limit_at_batch(limit.get("by_batch", {}), ours.batch)
                if ours.batch is not None
                else None
            )
            if alone is not None:
                # The batches an SLO allows may be far smaller than the limit's best one; this
                # splits the gap into what the batch size costs and what serving costs.
                print(
                    f"  {workload}: the model alone at ours' mean batch ({ours.batch:.1f}) "
                    f"{alone:.1f}/s = {alone / limit['throughput']:.2f}x the limit (no server "
                    f"could pass it with batches of this size); ours/that = "
                    f"{ours.extra['goodput'] / alone:.2f}"
                )
        for name, other in best.items():
            if name == "ours":
                continue
            speedup = ours.extra["goodput"] / other.extra["goodput"]
            print(
                f"  {workload}: ours/{name}: answers/s x{speedup:.2f}"
                f", p50 x{ours.result['p50_ms'] / other.result['p50_ms']:.2f}"
                f", p99 x{ours.result['p99_ms'] / other.result['p99_ms']:.2f}"
                f", CPU per answer x{_cpu_per_answer(ours) / _cpu_per_answer(other):.2f}"
                f" (at {ours.load} vs {other.load})"
            )
        c1 = {r.server: r for r in rows if r.workload == workload and r.load == "c=1"}
        if "ours" in c1 and "echo" in c1:
            added = c1["ours"].result["p50_ms"] - c1["echo"].result["p50_ms"]
            print(f"  {workload}: added p50 latency over echo at c=1: {added:.2f} ms")
    if paired:
        print("\nOurs against each baseline within each round (measured minutes apart):")
        for line in paired:
            print(line)


STARTERS: dict[str, Callable[[str], Server]] = {
    "ours": start_ours, "ours-binary": functools.partial(start_ours, binary=True),
    "echo": start_echo, "fastapi-naive": start_naive, "mlserver": start_mlserver,
    "bentoml": start_bentoml,
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="noop,mlp,efficientnet")
    parser.add_argument("--servers", default="ours,echo,fastapi-naive,mlserver,bentoml")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--json", default="")
    parser.add_argument(
        "--open-repeats", type=int, default=1,
        help="runs at each open-loop load; the table shows the median one and the spread",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="times each workload's servers run, one after another; the table shows each "
        "row's median round and ours against each baseline within every round",
    )  # fmt: skip
    parser.add_argument(
        "--mlp-runtime", choices=["onnx", "torch"], default="onnx",
        help="what runs the MLP in every server and in the limit",
    )  # fmt: skip
    parser.add_argument(
        "--replica-threads", type=int, default=None,
        help="intra-op threads of our replica (default: one per server core); with "
        "--server-cpus 0,1, 1 leaves the other core to the frontend",
    )  # fmt: skip
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    # The in-process limit is measured for every workload, whatever the servers.
    unknown = set(args.servers.split(",")) - set(STARTERS) - {"limit"}
    if unknown:
        parser.error(
            f"unknown server(s) {', '.join(sorted(unknown))}; choose from {', '.join(STARTERS)} "
            "(the in-process limit is always measured)"
        )
    if args.mlp_runtime == "onnx" and "mlp" in args.workloads.split(","):
        onnx_path = Path(tempfile.mkdtemp(prefix="bench-mlp-")) / "mlp.onnx"
        workloads.export_mlp_onnx(onnx_path)
        os.environ[workloads.MLP_ONNX_ENV] = str(onnx_path)  # the peers inherit it
    server_cpus = {int(c) for c in args.server_cpus.split(",")}
    peers = set(args.servers.split(",")) - {"ours", "ours-binary", "echo"}
    if len(server_cpus) > 1 and peers:
        print(
            f"note: the peers ({', '.join(sorted(peers))}) run with their one-core settings "
            f"(one worker, MLServer's parallel_workers 0) on {len(server_cpus)} server cores",
            flush=True,
        )
    if "ours" in args.servers.split(","):
        from query_frontend.native import compiled_modules

        print(f"our compiled modules: {', '.join(compiled_modules()) or 'none'}", flush=True)
    starters = dict(STARTERS)
    starters["ours"] = functools.partial(start_ours, replica_threads=args.replica_threads)
    starters["ours-binary"] = functools.partial(
        start_ours, replica_threads=args.replica_threads, binary=True
    )
    rows: list[Row] = []
    paired: list[str] = []
    limits: dict[str, dict[str, Any]] = {}
    for workload in args.workloads.split(","):
        print(f"== {workload}", flush=True)
        limits[workload] = measure_limit(workload, server_cpus, args.duration)
        print(f"  limit {limits[workload]}", flush=True)
        rounds: list[list[Row]] = []
        for round_number in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"-- round {round_number} of {args.rounds}", flush=True)
            round_rows: list[Row] = []
            for name in args.servers.split(","):
                if name == "limit" or (name == "echo" and workload == "efficientnet"):
                    continue
                try:
                    round_rows += bench_server(
                        workload, starters[name], server_cpus, args.duration, args.open_repeats
                    )
                except Exception as e:  # a peer that fails to start is reported, not fatal
                    print(f"  {name} failed: {e}", flush=True)
            rounds.append(round_rows)
        merged, workload_paired = combine_rounds(rounds)
        rows += merged
        paired += workload_paired
    print_table(rows, limits, paired)
    if args.json:
        Path(args.json).write_text(
            json.dumps([r.__dict__ for r in rows] + [{"limits": limits}], indent=1, default=str)
        )


if __name__ == "__main__":
    main()
