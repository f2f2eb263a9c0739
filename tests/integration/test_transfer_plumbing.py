"""Transfer jobs (HETAL) through real gRPC, SQLite and files, with a tiny stand-in trainer
and data owner (the protocol's shape, no CKKS): keys via the key authority, resumable
data-set upload in pieces, requests and replies until the stop bit, the head saved, and a
server restart in the middle of training that resumes from the persisted trainer state.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from fedhe_client.connection import ServerConnection
from fedhe_client.transfer.job import TransferJob
from fedhe_client.transfer.sources import FeatureSplits
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import (
    ClientConfig,
    IdentitySection,
    JobConfig,
    PartitionSection,
    PeerSection,
    ServerConfig,
)
from fedhe_common.hetal.protocol import (
    EncryptedDataset,
    OwnerReply,
    OwnerRequest,
    ProtocolError,
    RequestKind,
)
from fedhe_common.rpc.auth import TokenAuthority, token_sha256, write_secret_file
from fedhe_common.rpc.pieces import PIECE_BYTES
from fedhe_common.rpc.serving import ServerHandle, create_server
from fedhe_keyauth.servicer import KeyAuthorityServicer
from fedhe_keyauth.servicer import register as register_keyauth
from fedhe_keyauth.store import KeyStore
from fedhe_server.service import AggregationServer, max_message_bytes
from fedhe_server.servicer import AggregationServicer
from fedhe_server.servicer import register as register_server
from fedhe_server.store import JobState

EPOCHS, STEPS = 3, 2
BIG = PIECE_BYTES + 1000  # every ciphertext crosses a piece boundary


def _echo(request: OwnerRequest) -> bytes:
    """The stand-in owner's answer: a digest of everything the request carried."""
    h = hashlib.sha256(f"{request.seq}:{request.kind}".encode())
    for blob in request.ciphertexts:
        h.update(blob)
    return h.digest() * (BIG // 32)


@dataclass
class StandInTrainer:
    """Per epoch: STEPS x (softmax, refresh), then validate; the owner's stop bit ends it."""

    data: EncryptedDataset
    seq: int = 0
    epochs_run: int = 0
    best_epoch: int | None = None
    done: bool = False
    log: list[str] = field(default_factory=list)

    def _plan(self) -> tuple[RequestKind, int, int]:
        per_epoch = 2 * STEPS + 1
        epoch, k = divmod(self.seq, per_epoch)
        if k == 2 * STEPS:
            return RequestKind.VALIDATE, epoch * STEPS + STEPS, epoch
        return (RequestKind.SOFTMAX, RequestKind.REFRESH)[k % 2], epoch * STEPS + k // 2, epoch

    def pending(self) -> OwnerRequest | None:
        if self.done:
            return OwnerRequest(self.seq, RequestKind.FINISHED, 0, self.epochs_run, ())
        kind, step, epoch = self._plan()
        blobs = self.data.train_x if kind != RequestKind.VALIDATE else self.data.val_x
        blob = hashlib.sha256(b"".join(blobs) + self.seq.to_bytes(4, "little")).digest()
        return OwnerRequest(self.seq, kind, step, epoch, (blob * (BIG // 32),))

    def apply(self, reply: OwnerReply) -> None:
        request = self.pending()
        assert request is not None
        if reply.seq != request.seq or reply.kind != request.kind:
            raise ProtocolError("reply does not answer the pending request")
        if reply.ciphertexts != (_echo(request),):
            raise ProtocolError("reply ciphertexts were corrupted in transit")
        self.log.append(f"{reply.seq}:{reply.kind}")
        if reply.kind == RequestKind.VALIDATE:
            self.epochs_run += 1
            self.best_epoch = request.epoch
            self.done = reply.stop or self.epochs_run >= EPOCHS
        self.seq += 1

    def to_state(self) -> bytes:
        doc = {
            "seq": self.seq,
            "epochs": self.epochs_run,
            "best": self.best_epoch,
            "done": self.done,
            "log": self.log,
        }
        return json.dumps(doc).encode()


LOADS: list[bytes | None] = []


def stand_in_trainer(
    params_json: str, keys: bytes, data: EncryptedDataset, state: bytes | None
) -> StandInTrainer:
    assert json.loads(params_json)["mode"] == "client"
    assert keys == StandInOwner.KEYS
    LOADS.append(state)
    trainer = StandInTrainer(data)
    if state is not None:
        doc = json.loads(state)
        trainer.seq, trainer.epochs_run, trainer.best_epoch = doc["seq"], doc["epochs"], doc["best"]
        trainer.done, trainer.log = doc["done"], doc["log"]
    return trainer


@dataclass
class Head:
    weights: np.ndarray
    best_epoch: int
    preprocessor: dict[str, int]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.zeros(len(x), dtype=np.int64)


class StandInOwner:
    """Answers every request with a digest of it; stops after epoch 2 (of 3)."""

    KEYS = os.urandom(2_500_000)  # three key parts
    answered: ClassVar[list[int]] = []

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.history: list[str] = []

    @classmethod
    def create(cls, params: object, splits: FeatureSplits) -> StandInOwner:
        return cls(len(splits.train_x))

    @classmethod
    def from_state(cls, state: bytes, keys: bytes, data: bytes) -> StandInOwner:
        assert keys == cls.KEYS and json.loads(data) == {"data": True}
        doc = json.loads(state)
        owner = cls(doc["seed"])
        owner.history = doc["history"]
        return owner

    def eval_keys(self) -> bytes:
        return self.KEYS

    def encrypt_dataset(self) -> EncryptedDataset:
        rng = np.random.default_rng(self.seed)
        blobs = [rng.bytes(BIG + k) for k in range(7)]
        return EncryptedDataset(
            tuple(blobs[:3]), tuple(blobs[3:5]), (blobs[5],), (64, 64, 12), (40,), (blobs[6],)
        )

    def answer(self, request: OwnerRequest) -> OwnerReply:
        self.answered.append(request.seq)
        self.history.append(f"{request.seq}:{request.kind}")
        stop = request.kind == RequestKind.VALIDATE and request.epoch >= 1
        return OwnerReply(request.seq, request.kind, (_echo(request),), stop)

    def keys_state(self) -> bytes:
        return self.KEYS

    def data_state(self) -> bytes:
        return json.dumps({"data": True}).encode()

    def to_state(self) -> bytes:
        return json.dumps({"seed": self.seed, "history": self.history}).encode()

    def result(self) -> Head:
        return Head(np.ones((3, 11)), 1, {"kind": 1})


def features(_config: ClientConfig, _job: JobConfig) -> FeatureSplits:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 10))
    y = rng.integers(0, 3, size=300)
    return FeatureSplits(x[:140], y[:140], x[140:180], y[140:180], x[180:], y[180:])


JOB = """
version: 1
job: {name: tl, rounds: 1}
participants: {min_clients: 1, clients: [owner]}
transfer: {mode: client, batch: 128, max_epochs: 3, patience: 3}
"""


class Cluster:
    """Key authority and server in this process, on loopback, with tokens."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tokens = {name: f"{name}-token-{'x' * 32}" for name in ("server", "owner", "admin")}
        for name, token in self.tokens.items():
            write_secret_file(root / f"{name}.tok", token)
        roles = {"server": "server", "owner": "client", "admin": "admin"}
        ids = [
            IdentitySection(id=n, role=roles[n], token_sha256=token_sha256(t))  # type: ignore[arg-type]
            for n, t in self.tokens.items()
        ]
        self.ids = ids
        self.keyauth = create_server(
            "127.0.0.1:0",
            True,
            None,
            4 << 20,
            register_keyauth(KeyAuthorityServicer(KeyStore(root / "ka"), TokenAuthority(ids))),
        )
        self.server: AggregationServer | None = None
        self.handle: ServerHandle | None = None
        self.port = 0

    def peer(self, port: int, name: str) -> PeerSection:
        return PeerSection(
            address=f"127.0.0.1:{port}", token_file=str(self.root / f"{name}.tok"), insecure=True
        )

    def start_server(self, faults: object = None) -> AggregationServer:
        config = ServerConfig(
            state_dir=str(self.root / "srv"),
            insecure=True,
            listen=f"127.0.0.1:{self.port}",
            keyauth=self.peer(self.keyauth.port, "server"),
            identities=self.ids,
        )
        kwargs = {"faults": faults} if faults else {}
        self.server = AggregationServer(config, trainer_factory=stand_in_trainer, **kwargs)  # type: ignore[arg-type]
        self.handle = create_server(
            config.listen,
            True,
            None,
            max_message_bytes(),
            register_server(AggregationServicer(self.server, TokenAuthority(self.ids))),
        )
        self.port = self.handle.port
        return self.server

    def stop_server(self) -> None:
        assert self.server is not None and self.handle is not None
        self.handle.stop(None)
        self.server.stop()

    def client_config(self) -> ClientConfig:
        return ClientConfig(
            client_id="owner",
            server=self.peer(self.port, "owner"),
            keyauth=self.peer(self.keyauth.port, "owner"),
            partition=PartitionSection(index=0, count=1),
            state_dir=str(self.root / "owner"),
        )

    def owner_job(self) -> TransferJob:
        config = self.client_config()
        conn = ServerConnection(config.server, max_message_bytes())
        reg = conn.register("owner", "tl")
        job = parse_yaml(reg.job_yaml, JobConfig)
        return TransferJob(
            config, "tl", job, conn, features, StandInOwner.create, StandInOwner.from_state
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    LOADS.clear()
    StandInOwner.answered = []
    c = Cluster(tmp_path)
    yield c
    if c.handle is not None:
        c.stop_server()
    c.keyauth.stop(None)


def test_transfer_job_runs_through_the_services(cluster: Cluster) -> None:
    server = cluster.start_server()
    server.submit(JOB)
    metrics = cluster.owner_job().run()
    assert metrics["best_epoch"] == 1 and metrics["test_samples"] == 120
    # Stop bit after epoch 1's validation: 2 epochs x (2 x 2 steps + validate) replies.
    assert StandInOwner.answered == list(range(10))
    status = server.transfers.store.require("tl")
    assert (status.phase, status.answered, status.epochs_run, status.best_epoch) == (
        "finished",
        10,
        2,
        1,
    )
    from fedhe_server.views import job_status

    reply = job_status(server.db, "tl")
    assert reply.state == 3 and reply.transfer.epochs_run == 2 and reply.transfer.best_epoch == 1
    from click.testing import CliRunner

    from fedhe_cli.app import cli

    peer = ["--server", f"127.0.0.1:{cluster.port}", "--insecure",
            "--token-file", str(cluster.root / "admin.tok")]  # fmt: skip
    shown = CliRunner().invoke(cli, ["job", "status", "tl", *peer])
    assert shown.exit_code == 0, shown.output
    assert "transfer finished (mode client)" in shown.output
    assert "2 epochs run, best epoch 1, 10 owner replies" in shown.output
    # The key authority and the server hold exactly the owner's evaluation keys.
    assert (cluster.root / "ka/jobs/tl/eval_keys.bin").read_bytes() == StandInOwner.KEYS
    assert (cluster.root / "srv/transfer/tl/eval_keys.bin").read_bytes() == StandInOwner.KEYS
    assert not list((cluster.root / "ka/jobs/tl").glob("secret*"))
    # The data set arrived intact, piece by piece; the head was saved (0600).
    data = StandInOwner(140).encrypt_dataset()
    sent = [*data.train_x, *data.train_y, *data.val_x, *data.initial]
    for k, blob in enumerate(sent):
        assert (cluster.root / f"srv/transfer/tl/dataset/item-{k}.bin").read_bytes() == blob
    card = json.loads((cluster.root / "owner/models/tl/card.json").read_text())
    assert card["kind"] == "transfer-head" and card["best_epoch"] == 1
    head = np.load(cluster.root / "owner/models/tl/head.npz")
    assert head["W"].shape == (3, 11)
    assert (cluster.root / "owner/transfer/tl/owner.state").stat().st_mode & 0o077 == 0
    # Keys and data were written once, apart from the small per-step state.
    keys = cluster.root / "owner/transfer/tl/owner.keys"
    assert keys.read_bytes() == StandInOwner.KEYS and keys.stat().st_mode & 0o077 == 0
    assert (cluster.root / "owner/transfer/tl/owner.data").stat().st_mode & 0o077 == 0
    assert len((cluster.root / "owner/transfer/tl/owner.state").read_bytes()) < 10_000


class Crash(Exception):
    """A crash point fired."""


@pytest.mark.parametrize(("point", "resumed_seq"), [("after_state", 5), ("before_state", 4)])
def test_server_restart_mid_training_resumes_and_finishes(
    cluster: Cluster, point: str, resumed_seq: int
) -> None:
    """The server dies while applying reply 4: after persisting its state but before the
    progress row (the restart repairs the row and asks request 5), or before persisting
    it (the restart asks request 4 again and the owner answers it again)."""
    fired = threading.Event()

    def faults(point_now: str) -> None:
        if point_now == point and len(StandInOwner.answered) == 5 and not fired.is_set():
            fired.set()
            raise Crash("server dies here")

    server = cluster.start_server(faults)
    server.submit(JOB)
    owner_done: dict[str, object] = {}

    def owner() -> None:
        try:
            owner_done["metrics"] = cluster.owner_job().run()
        except Exception as exc:  # the first server went away mid-reply
            owner_done["error"] = exc

    first = threading.Thread(target=owner)
    first.start()
    assert fired.wait(60)
    cluster.stop_server()
    first.join(60)
    assert "error" in owner_done  # the owner saw the server die
    row = json.loads((cluster.root / "owner/transfer/tl/stage.json").read_text())
    assert row["stage"] == "train"
    server = cluster.start_server()  # same port, same state dir
    metrics = cluster.owner_job().run()  # a restarted owner continues from its state
    assert metrics["best_epoch"] == 1
    assert LOADS[0] is None and LOADS[-1] is not None  # resumed from the persisted state
    assert json.loads(LOADS[-1])["seq"] == resumed_seq
    final = server.transfers.store.require("tl")
    assert (final.phase, final.answered) == ("finished", 10)
    assert StandInOwner.answered.count(4) == (2 if point == "before_state" else 1)


def test_cancelled_transfer_job_stops_its_owner(cluster: Cluster) -> None:
    from fedhe_client.agent import JobCancelledError

    hold, cancelled = threading.Event(), threading.Event()

    def faults(point: str) -> None:
        if point == "before_pending" and len(StandInOwner.answered) == 3:
            hold.set()
            cancelled.wait(30)  # the worker is mid-step while the admin cancels

    server = cluster.start_server(faults)
    server.submit(JOB)
    outcome: dict[str, BaseException] = {}

    def owner() -> None:
        try:
            cluster.owner_job().run()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=owner)
    thread.start()
    assert hold.wait(60)
    assert server.cancel("tl") == []
    cancelled.set()
    thread.join(60)
    assert isinstance(outcome.get("error"), JobCancelledError), outcome
    row = server.transfers.store.require("tl")
    assert (row.phase, row.error) == ("failed", "cancelled by an admin")
    assert server.db.job("tl").state == JobState.CANCELLED  # type: ignore[union-attr]


def test_saved_head_exports_like_any_kept_model(tmp_path: Path) -> None:
    import torch
    from click.testing import CliRunner

    from fedhe_cli.app import cli
    from fedhe_client.transfer.head_out import save_head

    weights = np.arange(33, dtype=np.float64).reshape(3, 11)
    card_path = save_head(tmp_path, "tl", Head(weights, 2, {"kind": 1}), {"accuracy": 0.5})
    card = json.loads(card_path.read_text())
    assert card["model_file"] == "head.safetensors" and card["best_epoch"] == 2
    result = CliRunner().invoke(cli, ["model", "export", str(card_path.parent), "--out",
                                      str(tmp_path / "head.pt")])  # fmt: skip
    assert result.exit_code == 0, result.output
    state = torch.load(tmp_path / "head.pt", weights_only=True)
    assert np.array_equal(state["weights"].numpy(), weights)
    assert np.array_equal(np.load(card_path.parent / "head.npz")["W"], weights)
