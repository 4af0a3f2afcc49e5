"""What `chuan serve` counts, and `/metrics` in Prometheus' text format (version 0.0.4).

The format is a few lines per metric, so it is written here rather than through
prometheus_client, whose process-wide registry would mix the metrics of every engine a test
process starts. The engine's worker thread writes `EngineMetrics` (`rejected` is counted by
`Engine.submit` under the engine's lock); the HTTP side reads it (plain ints and floats,
read whole).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

# Seconds: from a 5 ms decode step on a GPU to a minute-long queue on a CPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative-bucket histogram, as Prometheus exposes them."""

    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last: above every bucket
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out += [f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]
        return out


class EngineMetrics:
    """The engine's counters and latency histograms (see module doc for who writes them)."""

    def __init__(self):
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.generated_tokens = 0
        self.finished_rows = 0
        self.rejected = 0
        self.time_to_first_token = Histogram(LATENCY_BUCKETS)
        self.inter_token_latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)

    def observe_batch(self, rows: int) -> None:
        """Rows in a decode step (idle iterations are not steps)."""
        if rows:
            self.batch_size.observe(rows)


def _metric(name: str, kind: str, help: str, samples: list[str]) -> list[str]:
    return [f"# HELP {name} {help}", f"# TYPE {name} {kind}", *samples]


def prometheus_text(engine, requests: dict[tuple[str, int], int]) -> str:
    """The exposition of `engine`'s state and metrics and the server's `requests` counts
    (by endpoint and status code)."""
    m: EngineMetrics = engine.metrics
    lines = _metric(
        "chuan_requests_total",
        "counter",
        "HTTP requests answered, by endpoint and status code.",
        [
            f'chuan_requests_total{{endpoint="{path}",code="{code}"}} {count}'
            for (path, code), count in sorted(requests.items())
        ],
    )
    counters = [
        ("chuan_prompt_tokens_total", "Prompt tokens admitted.", m.prompt_tokens),
        ("chuan_prefix_cache_hit_tokens_total",
         "Prompt tokens whose keys and values came from the prefix cache (no prefill).",
         m.cached_tokens),
        ("chuan_generation_tokens_total", "Tokens generated.", m.generated_tokens),
        ("chuan_sequences_finished_total", "Sequences (rows) finished.", m.finished_rows),
        ("chuan_queue_rejections_total", "Requests refused with 429: the queue was full.",
         m.rejected),
    ]  # fmt: skip
    for name, help, value in counters:
        lines += _metric(name, "counter", help, [f"{name} {value}"])
    gauges = [
        ("chuan_queue_depth", "Sequences waiting for a slot.", engine.waiting_rows),
        ("chuan_running_sequences", "Sequences prefilling or decoding.", engine.running_rows),
        ("chuan_slots", "Slots in the KV pool (--max-batch).", engine.max_batch),
        ("chuan_kv_pool_bytes", "Memory of the KV slot pool.", engine.pool.bytes),
        ("chuan_prefix_cache_tokens", "Prompt tokens held in the prefix cache.",
         engine.prefixes.cached_tokens),
    ]  # fmt: skip
    for name, help, value in gauges:
        lines += _metric(name, "gauge", help, [f"{name} {value}"])
    histograms = [
        ("chuan_time_to_first_token_seconds", "From submission to a row's first token.",
         m.time_to_first_token),
        ("chuan_inter_token_latency_seconds", "Between consecutive tokens of a row.",
         m.inter_token_latency),
        ("chuan_batch_size", "Rows in each decode step.", m.batch_size),
    ]  # fmt: skip
    for name, help, histogram in histograms:
        lines += _metric(name, "histogram", help, histogram.lines(name))
    return "\n".join(lines) + "\n"
