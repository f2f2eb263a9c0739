"""Prometheus metrics of the aggregation server; every name is defined here.

Counts of rounds, uploads and bytes are read from the SQLite state at scrape
time, so they survive a restart and always agree with what the server
persisted. Only what leaves no row (refused chunks) and timings are counted in
process.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.errors import FedHEError
from fedhe_server.store import RoundState, StateDB, UploadState

ROUND_SECONDS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def rejection_reason(exc: BaseException) -> str:
    """A bounded label for a refused chunk: the error class in snake case."""
    if not isinstance(exc, FedHEError):
        return "internal"
    name = type(exc).__name__.removesuffix("Error")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class StateCollector(Collector):
    """Round and upload metrics computed from the state database on each scrape."""

    def __init__(self, db: StateDB) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        """Yield the state-derived metric families."""
        current = GaugeMetricFamily(
            "fedhe_round_current", "Latest round of each job (open or closed)", labels=["job"]
        )
        for job_id, number in self.db.latest_rounds():
            current.add_metric([str(job_id)], float(number))  # type: ignore[arg-type]
        yield current

        rounds = GaugeMetricFamily("fedhe_rounds", "Rounds by current state", labels=["state"])
        for state, count in self.db.round_state_counts():
            rounds.add_metric([str(state).lower()], float(count))  # type: ignore[arg-type]
        yield rounds

        uploads = self._upload_counts()
        yield CounterMetricFamily(
            "fedhe_clients_accepted", "Uploads committed into a round", uploads.get("accepted", 0)
        )
        dropped = CounterMetricFamily(
            "fedhe_clients_dropped", "Uploads left out of their round", labels=["reason"]
        )
        dropped.add_metric(["timeout"], uploads.get("timeout", 0))
        dropped.add_metric(["rejected"], uploads.get("rejected", 0))
        yield dropped
        yield GaugeMetricFamily(
            "fedhe_inflight_uploads",
            "Uploads begun in an open round, not committed yet",
            uploads.get("inflight", 0),
        )

        sent = CounterMetricFamily(
            "fedhe_upload_bytes", "Chunk payload bytes accepted", labels=["kind"]
        )
        totals = self.db.bytes_by_stream()
        for stream, kind in (
            (pb.STREAM_KIND_CIPHERTEXT, "ciphertext"),
            (pb.STREAM_KIND_PLAINTEXT, "plaintext"),
        ):
            sent.add_metric([kind], float(totals.get(stream) or 0))  # type: ignore[arg-type]
        yield sent

        yield self._round_durations()

    def _upload_counts(self) -> dict[str, float]:
        rows = self.db.upload_round_state_counts()
        totals: dict[str, float] = {}
        for upload_state, round_state, count in rows:
            if upload_state == UploadState.COMMITTED:
                key = "accepted"
            elif upload_state == UploadState.REJECTED:
                key = "rejected"
            elif round_state == RoundState.OPEN:
                key = "inflight"
            else:
                key = "timeout"
            totals[key] = totals.get(key, 0.0) + float(count)  # type: ignore[arg-type]
        return totals

    def _round_durations(self) -> HistogramMetricFamily:
        seconds = self.db.round_durations()
        buckets = [(str(b), float(sum(s <= b for s in seconds))) for b in ROUND_SECONDS_BUCKETS]
        buckets.append(("+Inf", float(len(seconds))))
        return HistogramMetricFamily(
            "fedhe_round_duration_seconds",
            "Wall time from opening a round to closing it",
            buckets=buckets,
            sum_value=sum(seconds),
        )


class ServerMetrics:
    """The server's metrics registry and its in-process counters."""

    def __init__(self, db: StateDB) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StateCollector(db))
        self.chunks_rejected = Counter(
            "fedhe_chunks_rejected",
            "Chunks refused before staging, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.aggregate_seconds = Histogram(
            "fedhe_aggregate_seconds",
            "Time to add one committed upload into its round's sums",
            registry=self.registry,
        )

    def chunk_rejected(self, exc: BaseException) -> None:
        """Count one refused chunk."""
        self.chunks_rejected.labels(reason=rejection_reason(exc)).inc()

    def serve(self, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
        """Expose ``/metrics`` over HTTP (port 0 picks a free port)."""
        return start_http_server(port, addr=host, registry=self.registry)
