"""HETAL privacy: nothing decrypted ever reaches the server.

Every reply is a fresh encryption (never an echo of what the server sent, different each
time for the same values), replies carry ciphertexts and the stop bit only, and the
server's trainer and kernels load no secret-key code.
"""

from __future__ import annotations

import dataclasses
import struct
import subprocess
import sys

import numpy as np
import pytest
import tenseal.sealapi as sa
from sklearn.datasets import load_digits

from fedhe_client.transfer.owner import DataOwner
from fedhe_common.hetal.params import SoftmaxMode, TransferParams
from fedhe_common.hetal.protocol import OwnerReply, OwnerRequest, RequestKind
from fedhe_common.hetal.trainer import TransferTrainer

Run = tuple[DataOwner, TransferTrainer, list[OwnerRequest], list[OwnerReply]]


@pytest.fixture(scope="module")
def run() -> Run:
    """One epoch of a tiny mode-client job, every request and reply kept."""
    x, y = load_digits(return_X_y=True)
    params = TransferParams(mode=SoftmaxMode.CLIENT, classes=10, features=61, max_epochs=1)
    owner = DataOwner.create(params, x[:128], y[:128], x[128:192], y[128:192])
    trainer = TransferTrainer(params, owner.eval_keys(), owner.encrypt_dataset())
    requests, replies = [], []
    while (req := trainer.pending()) is not None and req.kind != RequestKind.FINISHED:
        reply = owner.answer(req)
        trainer.apply(reply)
        requests.append(req)
        replies.append(reply)
    return owner, trainer, requests, replies


def test_replies_are_fresh_ciphertexts_never_echoes(run: Run) -> None:
    _, trainer, requests, replies = run
    assert {r.kind for r in requests} == {RequestKind.SOFTMAX, RequestKind.REFRESH,
                                          RequestKind.VALIDATE}  # fmt: skip
    sent = {c for r in requests for c in r.ciphertexts}
    data = trainer.data
    sent |= set(data.train_x) | set(data.train_y) | set(data.val_x) | set(data.initial)
    received = [c for r in replies for c in r.ciphertexts]
    assert received and not sent & set(received)
    assert len(set(received)) == len(received)
    for blob in received:  # each one a top-level encryption with factor 1: not a result
        ct = trainer.be.deserialize(blob)
        assert trainer.be.level(ct) == trainer.be.depth and ct.f == 1.0


def test_encrypting_the_same_values_twice_gives_different_ciphertexts(run: Run) -> None:
    owner = run[0]
    vec = owner.layout.pack_wc(owner.w)[0]
    a, b = owner._encrypt(vec), owner._encrypt(vec)
    assert a != b
    assert np.allclose(owner._dec(a), owner._dec(b), atol=1e-4)


def test_replies_carry_only_ciphertexts_and_the_stop_bit(run: Run) -> None:
    owner, _, _, replies = run
    assert [f.name for f in dataclasses.fields(OwnerReply)] == ["seq", "kind", "ciphertexts",
                                                                 "stop"]  # fmt: skip
    for reply in replies:
        assert isinstance(reply.stop, bool) and all(isinstance(c, bytes) for c in reply.ciphertexts)
    # The owner's plaintext values (its weights, the validation logits) appear in no reply.
    needles = [struct.pack("<d", float(v)) for v in owner.w.ravel()[:50] if abs(v) > 1e-3]
    blob = b"".join(c for r in replies for c in r.ciphertexts)
    assert needles and not any(n in blob for n in needles)
    validate = [r for r in replies if r.kind == RequestKind.VALIDATE]
    assert validate and all(not r.ciphertexts for r in validate)


def test_the_trainer_holds_no_secret_key(run: Run) -> None:
    trainer = run[1]
    held = [v for v in vars(trainer.be).values()
            if isinstance(v, sa.SecretKey | sa.Decryptor | sa.KeyGenerator)]  # fmt: skip
    assert not held and trainer.be.encryptor is not None


GUARD = """
import sys
import fedhe_common.hetal.trainer, fedhe_common.hetal.kernels, fedhe_common.hetal.softmax
import fedhe_common.hetal.plain, fedhe_common.hetal.schedule, fedhe_common.hetal.params
client = sorted(m for m in sys.modules if m.startswith("fedhe_client"))
makers = sorted(
    name for name, mod in list(sys.modules.items())
    if name.startswith("fedhe") and getattr(mod, "__file__", None)
    and any(t in open(mod.__file__, encoding="utf-8").read()
            for t in ("KeyGenerator(", "Decryptor(", "SecretKey("))
)
print(client, makers)
sys.exit(1 if client or makers else 0)
"""


def test_trainer_and_kernels_load_no_secret_key_code() -> None:
    result = subprocess.run([sys.executable, "-c", GUARD], capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
