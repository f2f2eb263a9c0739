"""Optional TensorBoard logging on the client: a real job writes one run folder per job,
read back with tensorboard's own event reader; a missing extra is one clear ConfigError."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from fedhe_cli.inprocess import InProcessFederation
from fedhe_client.agent import ClientAgent
from fedhe_client.cli import cli
from fedhe_client.tb_log import TAGS, NoRoundLog, check_available, open_round_log
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2_grpc
from fedhe_common.config.models import ClientConfig, PartitionSection, PeerSection
from fedhe_common.errors import ConfigError, InvalidArgumentError

HAVE_WRITER = importlib.util.find_spec("tensorboardX") is not None
HAVE_READER = importlib.util.find_spec("tensorboard") is not None
needs_tensorboard = pytest.mark.skipif(
    not (HAVE_WRITER and HAVE_READER),
    reason="needs tensorboardX (extra fedhe[tensorboard]) and tensorboard's event reader "
    "(pip install -e '.[dev]')",
)
CLIENTS = ["c1", "c2"]
JOB = """
job: {name: tbjob, rounds: 2, seed: 0}
participants: {min_clients: 2, round_timeout_s: 30, wait_after_min_s: 30}
model: {name: mlp, hidden: 8}
training: {local_epochs: 1}
"""
# The scalars every round carries (server-measured aggregate_s is not known to the client).
ROUND_TAGS = {
    TAGS[name]
    for name in ("accuracy", "loss", "samples", "train_s", "encrypt_s", "upload_s",
                 "download_s", "decrypt_s", "upload_bytes", "download_bytes")
}  # fmt: skip


def _config(tmp_path: Path, tb: Path | None) -> ClientConfig:
    token = tmp_path / "c1.token"  # never read: these tests dial nothing
    peer = PeerSection(address="127.0.0.1:1", insecure=True, token_file=str(token))
    return ClientConfig(
        client_id="c1",
        server=peer,
        keyauth=peer,
        partition=PartitionSection(index=0, count=1),
        tensorboard_dir=None if tb is None else str(tb),
    )


def test_off_by_default(tmp_path: Path) -> None:
    config = _config(tmp_path, None)
    assert config.tensorboard_dir is None
    check_available(config)
    assert isinstance(open_round_log(config, "job1"), NoRoundLog)
    assert not any(tmp_path.iterdir())


def test_missing_extra_is_a_config_error_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    config = _config(tmp_path, tmp_path / "tb")
    with pytest.raises(ConfigError, match=r"fedhe\[tensorboard\]"):
        check_available(config)
    with pytest.raises(ConfigError, match=r"fedhe\[tensorboard\]"):
        ClientAgent(config)  # before dialling the (absent) server
    path = tmp_path / "client.yaml"
    path.write_text(
        "client_id: c1\nserver: {address: '127.0.0.1:1', insecure: true, token_file: t}\n"
        "keyauth: {address: '127.0.0.1:1', insecure: true, token_file: t}\n"
        f"partition: {{index: 0, count: 1}}\ntensorboard_dir: {tmp_path / 'tb'}\n"
    )
    result = CliRunner().invoke(cli, ["run", "--config", str(path)])
    assert result.exit_code != 0
    assert "fedhe[tensorboard]" in result.output
    assert not (tmp_path / "tb").exists()


@needs_tensorboard
def test_job_id_must_be_one_path_component(tmp_path: Path) -> None:
    config = _config(tmp_path, tmp_path / "tb")
    for bad in ("..", "a/b", "../x", ""):
        with pytest.raises(InvalidArgumentError):
            open_round_log(config, bad)
    assert not (tmp_path / "tb").exists()


@needs_tensorboard
def test_a_real_job_writes_scalars_per_round(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    federation = InProcessFederation(tmp_path, CLIENTS)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{federation.server_port}")
        aggregation_pb2_grpc.AggregationServiceStub(channel).SubmitJob(
            pb.SubmitJobRequest(job_yaml=JOB), metadata=federation.metadata("admin")
        )
        channel.close()
        errors: list[BaseException] = []

        def run(name: str, index: int) -> None:
            try:
                base = federation.client_config(name, index, len(CLIENTS))
                tb = str(tmp_path / "tb" / name)
                ClientAgent(
                    base.model_copy(update={"job_id": "tbjob", "tensorboard_dir": tb})
                ).run()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(c, i)) for i, c in enumerate(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        reported = federation.server.db.client_metrics("tbjob", 1, 2, 1000)
    finally:
        federation.close()

    for name in CLIENTS:
        run_dir = tmp_path / "tb" / name / "tbjob"
        assert list(run_dir.glob("events.out.tfevents.*")), f"no event file in {run_dir}"
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert tags >= ROUND_TAGS, ROUND_TAGS - tags
        for metric, tag in TAGS.items():
            if tag not in tags:
                continue
            events = acc.Scalars(tag)
            assert [e.step for e in events] == [1, 2], (tag, events)
            for e in events:  # the same figures the server got (float32 in the event file)
                sent = reported[e.step][name][metric]
                assert e.value == pytest.approx(sent, rel=1e-6, abs=1e-6), (tag, e.step)
        assert all(0.0 <= e.value <= 1.0 for e in acc.Scalars("round/accuracy"))
        assert all(e.value > 0 for e in acc.Scalars("bytes/upload"))
        assert all(e.value > 0 for e in acc.Scalars("step_seconds/train"))
