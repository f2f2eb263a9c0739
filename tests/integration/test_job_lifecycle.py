"""`fedhe job list|history|logs|status|cancel --json`, `history --csv` and `fedhe plot`
against the in-process server with two real edge agents running a real CKKS job (issue 14)."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from PIL import Image

from fedhe_cli.app import cli
from fedhe_client.daemon import EdgeDaemon
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import JobFilterSection
from tests.integration.conftest import Services

JOB = (
    "job: {name: NAME, rounds: 2}\nmodel: {name: mlp, hidden: 8}\n"
    "participants: {min_clients: 2, expected_clients: 2}\n"
)
STEPS = ("train_s", "encrypt_s", "upload_s", "aggregate_s", "download_s", "decrypt_s")


def _cli(services: Services, *args: str, ok: bool = True) -> str:
    common = ["--server", f"127.0.0.1:{services.server_port}", "--token-file",
              str(services.token_path("admin")), "--insecure"]  # fmt: skip
    result = CliRunner().invoke(cli, [*args, *common])
    assert (result.exit_code == 0) == ok, result.output
    return result.output


@pytest.fixture
def finished(services: Services) -> Iterator[Services]:
    """Job ``h`` run to the end by agents c1 and c2; job ``idle`` submitted, never run."""
    stub = services.agg_stub()
    for name in ("h", "idle"):
        stub.SubmitJob(
            pb.SubmitJobRequest(job_yaml=JOB.replace("NAME", name)),
            metadata=services.metadata("admin"),
        )
    config = {"jobs": JobFilterSection(names=["h"])}
    daemons = [
        EdgeDaemon(services.client_config(c, i, 2, 120).model_copy(update=config))
        for i, c in enumerate(("c1", "c2"))
    ]
    threads = [threading.Thread(target=d.run) for d in daemons]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(d.skipped.get("h") != "done" for d in daemons):
            time.sleep(0.2)
        assert all(d.skipped.get("h") == "done" for d in daemons), [d.skipped for d in daemons]
    finally:
        for d in daemons:
            d.stop.set()
        for t in threads:
            t.join(timeout=40)
    yield services


def test_list_history_logs_and_plot_show_every_client_and_step(
    finished: Services, tmp_path: Path
) -> None:
    listed = json.loads(_cli(finished, "job", "list", "--json"))["jobs"]
    by_id = {j["job_id"]: j for j in listed}
    assert by_id["h"]["state"] == "JOB_STATE_FINISHED" and by_id["h"]["clients"] == 2
    assert by_id["idle"]["state"] == "JOB_STATE_RUNNING" and by_id["idle"].get("clients", 0) == 0
    table = _cli(finished, "job", "list")
    assert "h" in table and "2/2" in table

    doc = json.loads(_cli(finished, "job", "history", "h", "--json"))
    published = [r for r in doc["rounds"] if r["state"] == "PUBLISHED"]
    assert [r["round"] for r in published] == [1, 2]
    for r in published:
        assert sorted(r["clients"]) == ["c1", "c2"]
        for m in r["clients"].values():
            assert 0 <= m["accuracy"] <= 1 and m["loss"] > 0
            assert m["samples"] > 0 and m["upload_bytes"] > 10_000  # CKKS ciphertexts
            assert m["download_bytes"] > 10_000
            assert all(m[s] >= 0 for s in STEPS) and m["encrypt_s"] > 0 and m["decrypt_s"] > 0
            assert m["aggregate_s"] > 0  # measured by the server at commit
        assert r["events"]["closed_unix_ms"] >= r["events"]["opened_unix_ms"] > 0

    rows = list(csv.DictReader(io.StringIO(_cli(finished, "job", "history", "h", "--csv"))))
    assert {(r["round"], r["client"]) for r in rows} == {
        (n, c) for n in ("1", "2") for c in ("c1", "c2")
    }
    assert all(float(r["train_s"]) > 0 and int(float(r["upload_bytes"])) > 0 for r in rows)
    last = json.loads(_cli(finished, "job", "history", "h", "--last", "1", "--json"))
    assert [r["round"] for r in last["rounds"]] == [2]

    events = json.loads(_cli(finished, "job", "logs", "h", "--json"))["events"]
    kinds = [e["kind"] for e in events]
    assert kinds.count("round_opened") >= 2 and kinds.count("round_closed") >= 2
    assert [e["unix_ms"] for e in events] == sorted(e["unix_ms"] for e in events)
    assert "round 2 PUBLISHED" in _cli(finished, "job", "logs", "h")

    status = json.loads(_cli(finished, "job", "status", "h", "--json"))
    assert status["state"] == "JOB_STATE_FINISHED" and len(status["clients"]) == 2

    out = tmp_path / "plots" / "h.png"
    _cli(finished, "plot", "h", "--out", str(out), "--size", "900x600")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (900, 600)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
        assert len(colors) > 4  # lines, bars, legend drawn


def test_cancel_json_and_bad_requests(services: Services, tmp_path: Path) -> None:
    services.agg_stub().SubmitJob(
        pb.SubmitJobRequest(job_yaml=JOB.replace("NAME", "k")), metadata=services.metadata("admin")
    )
    reply = json.loads(_cli(services, "job", "cancel", "k", "--json"))
    assert reply["state"] == "JOB_STATE_CANCELLED" and reply["job_id"] == "k"
    assert "NOT_FOUND" in _cli(services, "job", "history", "nope", ok=False)
    assert "NOT_FOUND" in _cli(services, "job", "logs", "nope", ok=False)
    assert "NOT_FOUND" in _cli(services, "plot", "nope", "--out", str(tmp_path / "x.png"), ok=False)
    assert not (tmp_path / "x.png").exists()
    assert "--size" in _cli(services, "plot", "k", "--size", "10x10", ok=False)
    assert "not both" in _cli(services, "job", "history", "k", "--json", "--csv", ok=False)
    # the new RPCs are admin-only
    stub = services.agg_stub()
    with pytest.raises(grpc.RpcError) as err:
        stub.ListJobSummaries(pb.ListJobSummariesRequest(), metadata=services.metadata("c1"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="k"), metadata=services.metadata("c1"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_job_list_pages(services: Services) -> None:
    stub = services.agg_stub()
    for i in range(5):
        stub.SubmitJob(
            pb.SubmitJobRequest(job_yaml=JOB.replace("NAME", f"p{i}")),
            metadata=services.metadata("admin"),
        )
    seen, after = [], ""
    while True:
        page = stub.ListJobSummaries(
            pb.ListJobSummariesRequest(limit=2, after_job_id=after),
            metadata=services.metadata("admin"),
        )
        assert len(page.jobs) <= 2
        seen += [j.job_id for j in page.jobs]
        after = page.next_after_job_id
        if not after:
            break
    assert seen == [f"p{i}" for i in range(5)]
    listed = json.loads(_cli(services, "job", "list", "--json"))["jobs"]
    assert [j["job_id"] for j in listed] == seen


def test_history_pages_stay_bounded_with_many_clients(services: Services) -> None:
    """30 clients x 32 metric names per round: a page holds fewer rounds, all of them whole."""
    services.agg_stub().SubmitJob(
        pb.SubmitJobRequest(job_yaml=JOB.replace("NAME", "big").replace("rounds: 2", "rounds: 99")),
        metadata=services.metadata("admin"),
    )
    with services.server.db.transaction() as tx:
        for r in range(2, 12):
            tx.execute(
                "INSERT INTO rounds (job_id, round, state, opened, deadline, closed) "
                "VALUES ('big', ?, 'PUBLISHED', 1, 2, 3)",
                (r,),
            )
            tx.executemany(
                "INSERT INTO metrics VALUES ('big', ?, ?, ?, 1.0)",
                [(r, f"c{c:03d}", f"metric-{i:02d}-{'y' * 40}") for c in range(30)
                 for i in range(32)],
            )  # fmt: skip
    reply = services.agg_stub().GetJobHistory(
        pb.GetJobHistoryRequest(job_id="big"), metadata=services.metadata("admin")
    )
    assert reply.truncated and [r.summary.round for r in reply.rounds] == [9, 10, 11]
    assert all(len(r.clients) == 30 for r in reply.rounds)
    assert reply.ByteSize() < 300_000
    rounds = json.loads(_cli(services, "job", "history", "big", "--json"))["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, 12))  # paged through to round 1
