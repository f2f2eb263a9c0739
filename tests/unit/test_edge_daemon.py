"""The long-lived agent's allow-list and reconnect backoff (issue 14)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fedhe_client.daemon import Backoff, EdgeDaemon
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import ClientConfig, JobFilterSection, PartitionSection, PeerSection
from fedhe_common.rpc.auth import new_token, write_secret_file

TOKEN: list[str] = []


@pytest.fixture(autouse=True)
def _token(tmp_path: Path) -> None:
    write_secret_file(tmp_path / "c1.token", new_token())
    TOKEN[:] = [str(tmp_path / "c1.token")]


def _config(**fields: object) -> ClientConfig:
    peer = PeerSection(address="127.0.0.1:1", token_file=TOKEN[0], insecure=True)
    return ClientConfig(client_id="c1", server=peer, keyauth=peer,
                        partition=PartitionSection(index=0, count=1), **fields)  # type: ignore[arg-type]  # fmt: skip


def test_allow_list_by_job_name_and_task() -> None:
    offers = [pb.JobOffer(job_id="a", task=""), pb.JobOffer(job_id="b", task="tabular")]
    anyone = EdgeDaemon(_config())
    assert [anyone.allowed(o) for o in offers] == [True, True]
    by_task = EdgeDaemon(_config(jobs=JobFilterSection(tasks=["tabular"])))
    assert [by_task.allowed(o) for o in offers] == [False, True]
    by_name = EdgeDaemon(_config(jobs=JobFilterSection(names=["a"])))
    assert [by_name.allowed(o) for o in offers] == [True, False]
    pinned = EdgeDaemon(_config(job_id="b"))
    assert [pinned.allowed(o) for o in offers] == [False, True]
    for daemon in (anyone, by_task, by_name, pinned):
        daemon.conn.close()


def test_backoff_is_capped_jittered_and_resets() -> None:
    random.seed(1)
    backoff = Backoff(cap_s=4.0, base_s=0.5)
    delays = [backoff.next_delay() for _ in range(200)]
    assert max(delays) <= 4.0 and min(delays) >= 0.0
    assert len({round(d, 6) for d in delays}) > 150  # jittered, not a fixed schedule
    assert max(delays[:2]) <= 1.0  # starts small
    backoff.reset()
    assert backoff.next_delay() <= 0.5
