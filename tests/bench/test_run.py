"""The benchmark's choice among repeated open-loop runs, what it counts of each, its limit
runs, and its command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench import workloads
from bench.loadgen import RunResult
from bench.run import (
    Measured,
    Row,
    bench_server,
    combine_rounds,
    limit_at_batch,
    measure_limit,
    median_run,
    print_table,
    start_ours,
)


def _result(defaults: int, answered_ms: float) -> RunResult:
    answered = [answered_ms / 1000] * (100 - defaults)
    return RunResult(
        sent=100,
        latencies_s=answered + [0.049] * defaults,
        defaults=defaults,
        elapsed_s=1.0,
        answered_latencies_s=answered,
    )


def test_the_median_run_by_defaults_is_kept_with_the_spread_of_all() -> None:
    runs = [Measured(_result(d, ms), 0.9, 20.0) for d, ms in ((12, 64.0), (0, 45.0), (3, 51.0))]
    chosen, spread = median_run(runs, 0.05)
    assert chosen.result.defaults == 3 and (chosen.cpu, chosen.batch) == (0.9, 20.0)
    # Answers within a 50 ms SLO: all 100 of the run at 45 ms, none at 51 or 64 ms.
    assert spread == (
        "defaults 0.00%-12.00%, p99 of answers 45.0-64.0 ms, "
        "answers within the SLO 0-100/s over 3 runs"
    )


def test_equal_defaults_are_ordered_by_the_p99_of_answers() -> None:
    runs = [Measured(_result(1, ms), 1.0) for ms in (70.0, 40.0, 55.0, 60.0)]
    chosen, _ = median_run(runs, 0.05)
    # Of four, the lower middle one: the second best.
    assert chosen.result.answered_latencies_s[0] == 0.055


def test_a_single_run_is_its_own_median() -> None:
    only = Measured(_result(5, 48.0), 0.5, 8.0)
    assert median_run([only], 0.05)[0] is only


def test_answers_within_the_slo_leave_out_late_answers_and_defaults() -> None:
    result = RunResult(
        sent=5,
        latencies_s=[0.01, 0.05, 0.0501, 0.2, 0.03],
        defaults=1,
        elapsed_s=2.0,
        answered_latencies_s=[0.01, 0.05, 0.0501, 0.2],
    )
    assert result.answered_within_per_s(0.05) == 1.0  # 0.01 and 0.05 s, over 2 s
    assert result.goodput == 2.0


def test_an_unknown_server_is_refused_before_anything_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--servers", "ours,limit,lmit"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 2
    assert "unknown server(s) lmit" in done.stderr
    assert "== " not in done.stdout  # no workload was started


def _row(server: str, load: str, goodput: float, p50_ms: float = 1.0, defaults: float = 0.0) -> Row:
    result = {"p50_ms": p50_ms, "p99_ms": 2 * p50_ms, "answered_p99_ms": 2 * p50_ms}
    result["default_ratio"] = defaults
    return Row("noop", server, load, result, None, 0.9, {"goodput": goodput, "in_slo": goodput})


def test_rounds_keep_each_row_s_median_round_and_pair_ours_with_each_baseline() -> None:
    # The VM drifts: the echo server's rate doubles over the rounds, and ours with it.
    rounds = [
        [_row("ours", "c=1", 500, 1.5), _row("ours", "c=64", 3000),
         _row("ours", "80% (2400/s)", 2400, defaults=0.02), _row("echo", "c=1", 2000, 0.5),
         _row("echo", "c=64", 6000)],
        [_row("ours", "c=1", 900, 0.9), _row("ours", "c=64", 6000),
         _row("ours", "80% (4800/s)", 4800, defaults=0.0), _row("echo", "c=1", 3000, 0.3),
         _row("echo", "c=64", 12000)],
        [_row("ours", "c=1", 700, 1.2), _row("ours", "c=64", 4000),
         _row("ours", "80% (3200/s)", 3200, defaults=0.5), _row("echo", "c=1", 2500, 0.4),
         _row("echo", "c=64", 10000)],
    ]  # fmt: skip
    merged, paired = combine_rounds(rounds)
    by_key = {(r.server, r.load.split(" (")[0]): r for r in merged}
    assert len(merged) == 5
    assert by_key["ours", "c=64"].extra["goodput"] == 4000  # the median of 3000, 6000, 4000
    assert by_key["echo", "c=64"].extra["goodput"] == 10000
    # An open-loop row is the median by defaults, whatever its rate.
    assert by_key["ours", "80%"].load == "80% (2400/s)"
    assert by_key["ours", "80%"].extra["rounds"] == (
        "answers/s 2400-4800, defaults 0.00%-50.00% over 3 rounds"
    )
    assert by_key["ours", "c=1"].extra["rounds"] == "answers/s 500-900 over 3 rounds"
    assert paired == [
        "  noop: ours/echo per round: answers/s x0.50, x0.50, x0.40 (median x0.50)",
        "  noop: added p50 latency over echo at c=1 per round: +1.00, +0.60, +0.80 ms "
        "(median +0.80)",
    ]


def test_one_round_is_left_as_it_ran() -> None:
    rows = [_row("ours", "c=1", 500), _row("echo", "c=1", 2000)]
    assert combine_rounds([rows]) == (rows, [])


def test_the_limit_runs_pytorch_with_a_thread_per_core_it_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    seen: list[tuple[int, frozenset[int]]] = []

    def program(batch: Any) -> None:
        seen.append((torch.get_num_threads(), frozenset(os.sched_getaffinity(0))))

    monkeypatch.setattr(workloads, "build_efficientnet", lambda: program)
    # As when the benchmark built the MLP with PyTorch first, free to use every core.
    torch.set_num_threads(4)
    try:
        measure_limit("efficientnet", {0}, 0.1)
        assert seen and set(seen) == {(1, frozenset({0}))}
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(threads)


def _batch_rates(fixed_s: float, per_item_s: float, sizes: tuple[int, ...]) -> dict[int, float]:
    return {n: n / (fixed_s + per_item_s * n) for n in sizes}


def test_the_limit_between_two_measured_sizes_takes_a_batch_s_time_as_linear_in_its_size() -> None:
    by_batch = _batch_rates(0.002, 0.0005, (8, 32, 256))
    # 2 ms + 20 * 0.5 ms = 12 ms for 20 queries.
    assert limit_at_batch(by_batch, 20.0) == pytest.approx(20 / 0.012)
    assert limit_at_batch(by_batch, 32.0) == by_batch[32]
    assert limit_at_batch(by_batch, 4.0) is None
    assert limit_at_batch(by_batch, 300.0) is None
    assert limit_at_batch({}, 20.0) is None


def test_the_limit_keeps_the_rate_of_every_batch_size_it_measured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def predict(model: Any, batch: Any) -> list[int]:
        # A fixed cost per call and one per query, as a model's batches have.
        time.sleep(0.001 + 0.00002 * len(batch))
        return [0] * len(batch)

    monkeypatch.setattr(workloads, "load_mlp", lambda: None)
    monkeypatch.setattr(workloads, "mlp_predict", predict)
    limit = measure_limit("mlp", {0}, 0.7)
    by_batch = limit["by_batch"]
    assert set(by_batch) == {1, 8, 16, 32, 64, 128, 256}
    assert limit["throughput"] == max(by_batch.values()) == by_batch[limit["best_batch"]]
    assert by_batch[1] < by_batch[32] < by_batch[256]


def test_the_table_names_the_model_s_own_rate_at_the_batch_size_ours_used(
    capsys: pytest.CaptureFixture[str],
) -> None:
    by_batch = _batch_rates(0.002, 0.0005, (8, 32, 256))
    limits = {"mlp": {"throughput": by_batch[256], "best_batch": 256, "by_batch": by_batch}}
    result = {"p50_ms": 20.0, "p99_ms": 40.0, "answered_p99_ms": 40.0, "default_ratio": 0.0}
    rows = [
        Row("mlp", "ours", "c=32", result, 20.0, 0.95, {"goodput": 1000.0, "in_slo": 1000.0}),
        Row("mlp", "ours", "c=8", result, 6.0, 0.95, {"goodput": 600.0, "in_slo": 600.0}),
    ]
    print_table(rows, limits)
    out = capsys.readouterr().out
    # 20 queries in 12 ms: 1,666.7/s, and 256 in 130 ms: 1,969.2/s.
    assert (
        "mlp: the model alone at ours' mean batch (20.0) 1666.7/s = 0.85x the limit (no server "
        "could pass it with batches of this size); ours/that = 0.60"
    ) in out


def test_our_runs_report_the_batch_size_and_the_defaults_by_cause_from_the_frontend() -> None:
    rows = bench_server("noop", start_ours, set(os.sched_getaffinity(0)), 0.3)
    loads = [r.load.split(" (")[0] for r in rows]
    assert loads == ["c=1", "c=8", "c=32", "c=64", "50%", "80%", "100%", "120%"]
    assert rows[0].batch == 1.0  # one client: one query per batch
    for row in rows:
        assert row.batch is not None and row.batch >= 1.0
        # A no-op model with a 1 s SLO: every query the frontend received was answered.
        assert row.extra["causes"] == {"overloaded": 0.0, "expired": 0.0, "other": 0.0}


def test_the_table_breaks_our_defaults_down_by_cause(capsys: pytest.CaptureFixture[str]) -> None:
    result = {"p50_ms": 20.0, "p99_ms": 40.0, "answered_p99_ms": 40.0, "default_ratio": 0.05}
    causes = {"overloaded": 0.02, "expired": 0.01, "other": 0.015}
    extra = {"goodput": 950.0, "in_slo": 950.0, "causes": causes}
    none = {**extra, "causes": dict.fromkeys(causes, 0.0)}
    rows = [
        Row("mlp", "ours", "80% (1000/s)", result, 20.0, 0.9, extra),
        Row("mlp", "ours", "50% (600/s)", {**result, "default_ratio": 0.0}, 9.0, 0.6, none),
    ]
    print_table(rows, {})
    out = capsys.readouterr().out
    assert (
        "mlp          ours           80% (1000/s)     refused as overloaded 2.00%, "
        "expired in the queue 1.00%, other (sent, not back in time) 1.50%"
    ) in out
    assert "50% (600/s)" not in out.split("by cause")[1]  # no defaults, nothing to break down
