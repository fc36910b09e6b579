"""Prometheus text-format metrics for the analyzer service, with no dependency.

A tiny, thread-safe subset of the Prometheus data model: counters with labels and cumulative
histograms, rendered in the text exposition format 0.0.4 (``GET /metrics``). The service records

* ``privsplit_requests_total{endpoint,status}``: every answered request, by HTTP status;
* ``privsplit_errors_total{endpoint,status}``: the 4xx/5xx subset of the above;
* ``privsplit_request_latency_seconds{endpoint}``: time from receiving the request to the reply;
* ``privsplit_batch_size``: rows per analyzer call (micro-batching at work when > 1);
* ``privsplit_batch_requests``: requests merged into one analyzer call;
* ``privsplit_duplicate_requests_total``: retried requests answered from the idempotency cache.

:func:`parse_prometheus` reads the format back (used by tests and the benchmark).

With several worker processes (``privsplit serve --workers N``) every worker writes its series to
``shared_dir`` once a second and ``/metrics``, whichever worker answers it, renders the **sum over
all workers** (the live numbers of the answering one, the latest snapshot of the others; files of
dead workers are kept, so counters never go down when a worker is replaced; a killed worker's last
second is lost). Same metric names as one process, so dashboards need no change.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import threading
from pathlib import Path
from collections.abc import Iterable, Sequence

__all__ = ["Counter", "Histogram", "Registry", "ServiceMetrics", "parse_prometheus",
           "LATENCY_BUCKETS", "BATCH_BUCKETS"]

LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

Labels = tuple[tuple[str, str], ...]


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(labels: Labels, extra: Labels = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


class Counter:
    """A monotonically increasing counter, one value per label set."""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self._values: dict[Labels, float] = {}
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} needs labels {list(self.labelnames)}, got {sorted(labels)}")
        return tuple((k, str(labels[k])) for k in self.labelnames)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0) to the series with these labels."""
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """Current value of one series (0 if never incremented)."""
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.labelnames:
            items = [((), 0.0)]
        lines += [f"{self.name}{_labels(k)} {_fmt(v)}" for k, v in items]
        return lines


class Histogram:
    """A cumulative histogram (``_bucket{le=...}``, ``_sum``, ``_count``), one per label set."""

    def __init__(self, name: str, help: str, buckets: Iterable[float], labelnames: Sequence[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._series: dict[Labels, list[float]] = {}  # per-bucket counts..., +Inf count, sum
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        """Record one observation."""
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} needs labels {list(self.labelnames)}, got {sorted(labels)}")
        key = tuple((k, str(labels[k])) for k in self.labelnames)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += 1
            series[-1] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        if not items and not self.labelnames:
            items = [((), [0.0] * (len(self.buckets) + 2))]
        for key, series in items:
            for bound, count in zip(self.buckets, series):
                lines.append(f"{self.name}_bucket{_labels(key, (('le', _fmt(bound)),))} {_fmt(count)}")
            lines.append(f"{self.name}_bucket{_labels(key, (('le', '+Inf'),))} {_fmt(series[-2])}")
            lines.append(f"{self.name}_sum{_labels(key)} {_fmt(series[-1])}")
            lines.append(f"{self.name}_count{_labels(key)} {_fmt(series[-2])}")
        return lines


class Registry:
    """An ordered set of metrics rendered together."""

    def __init__(self) -> None:
        self._metrics: list[Counter | Histogram] = []

    def add(self, metric: Counter | Histogram) -> Counter | Histogram:
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        """The whole exposition, newline-terminated."""
        return "\n".join(line for m in self._metrics for line in m.render()) + "\n"


def _state(metric: Counter | Histogram) -> list[list]:
    with metric._lock:  # noqa: SLF001 - same module
        items = metric._values.items() if isinstance(metric, Counter) else metric._series.items()  # noqa: SLF001
        return [[[list(kv) for kv in key], value] for key, value in items]


def _add_state(metric: Counter | Histogram, state: list[list]) -> None:
    for key, value in state:
        labels = tuple((str(k), str(v)) for k, v in key)
        if isinstance(metric, Counter):
            metric._values[labels] = metric._values.get(labels, 0.0) + float(value)  # noqa: SLF001
        else:
            series = metric._series.setdefault(labels, [0.0] * (len(metric.buckets) + 2))  # noqa: SLF001
            for i, v in enumerate(value[:len(series)]):
                series[i] += float(v)


class ServiceMetrics:
    """The metrics of one analyzer service (see the module docstring).

    Args:
        shared_dir: with several worker processes, the folder where each writes its snapshot
            (``worker-<pid>.json``) and from which :meth:`render` sums them; None for one process.
    """

    def __init__(self, shared_dir: str | Path | None = None) -> None:
        self.registry = Registry()
        self.requests = Counter("privsplit_requests_total", "Requests answered, by endpoint and HTTP status.",
                                ("endpoint", "status"))
        self.errors = Counter("privsplit_errors_total", "Requests answered with a 4xx or 5xx status.",
                              ("endpoint", "status"))
        self.latency = Histogram("privsplit_request_latency_seconds", "Time from request to reply.",
                                 LATENCY_BUCKETS, ("endpoint",))
        self.batch_size = Histogram("privsplit_batch_size", "Rows per analyzer call.", BATCH_BUCKETS)
        self.batch_requests = Histogram("privsplit_batch_requests", "Requests merged into one analyzer call.",
                                        BATCH_BUCKETS)
        self.duplicates = Counter("privsplit_duplicate_requests_total",
                                  "Retried requests (same id and body) answered from the idempotency cache.")
        self.metrics = (self.requests, self.errors, self.latency, self.batch_size, self.batch_requests,
                        self.duplicates)
        for metric in self.metrics:
            self.registry.add(metric)
        self.shared_dir = Path(shared_dir) if shared_dir is not None else None
        if self.shared_dir is not None:
            self.shared_dir.mkdir(parents=True, exist_ok=True)
            self._file = self.shared_dir / f"worker-{os.getpid()}.json"
            threading.Thread(target=self._write_every, args=(1.0,), name="privsplit-metrics", daemon=True).start()
            atexit.register(self.write_snapshot)

    def record_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.requests.inc(endpoint=endpoint, status=str(status))
        if status >= 400:
            self.errors.inc(endpoint=endpoint, status=str(status))
        self.latency.observe(seconds, endpoint=endpoint)

    def record_batch(self, rows: int, requests: int) -> None:
        """Record one analyzer call of ``rows`` rows merged from ``requests`` requests."""
        self.batch_size.observe(rows)
        self.batch_requests.observe(requests)

    def snapshot(self) -> dict[str, list]:
        """Every series of this process, JSON-ready."""
        return {m.name: _state(m) for m in self.metrics}

    def write_snapshot(self) -> None:
        """Write :meth:`snapshot` to this worker's file (atomically: readers never see half a file)."""
        if self.shared_dir is None:
            return
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot()))
        os.replace(tmp, self._file)

    def _write_every(self, seconds: float) -> None:
        stop = threading.Event()
        while not stop.wait(seconds):
            try:
                self.write_snapshot()
            except OSError:
                pass  # a full disk must not stop serving; the next round tries again

    def render(self) -> str:
        """The exposition: this process's series, or with ``shared_dir`` the sum over all workers."""
        if self.shared_dir is None:
            return self.registry.render()
        total = ServiceMetrics()
        snapshots = [self.snapshot()]
        for path in sorted(self.shared_dir.glob("worker-*.json")):
            if path != self._file:
                try:
                    snapshots.append(json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue  # a file being replaced right now; its worker is counted next scrape
        for snap in snapshots:
            for metric in total.metrics:
                _add_state(metric, snap.get(metric.name, []))
        return total.render()


def parse_prometheus(text: str) -> dict[str, float]:
    """``{'name{label="v",...}': value}`` for every sample line of a text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value.replace("+Inf", "inf").replace("-Inf", "-inf"))
    return out
