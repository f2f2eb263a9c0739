"""The transfer-learning protocol between the server's trainer and the data owner.

Transport-free: the services move these messages over gRPC, ``fedhe simulate`` and
``fedhe bench hetal`` pass them in process. Every ciphertext travels as SEAL's
serialized bytes; nothing decrypted ever travels to the server.

Flow per step (``mode: client``): the server sends ``SOFTMAX`` (the batch's logits,
encrypted), the owner answers fresh encryptions of P - Y; the server computes the
gradient and the Nesterov combination and sends ``REFRESH`` (the new encrypted
weights); the owner answers fresh encryptions of them. ``mode: server`` skips
``SOFTMAX`` (the softmax is a polynomial on ciphertexts). After each epoch the server
sends ``VALIDATE`` (encrypted validation logits); the owner answers the stop bit.
``FINISHED`` carries the final encrypted layer and needs no answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class RequestKind(StrEnum):
    """What the server asks of the data owner."""

    SOFTMAX = "softmax"
    REFRESH = "refresh"
    VALIDATE = "validate"
    FINISHED = "finished"


@dataclass(frozen=True)
class OwnerRequest:
    """One request from the server's trainer to the data owner.

    ``seq`` counts requests from 0 and never repeats; a request is deterministic in the
    trainer's state, so a restarted server asks the same ``seq`` again.
    """

    seq: int
    kind: RequestKind
    step: int
    epoch: int
    ciphertexts: tuple[bytes, ...]


@dataclass(frozen=True)
class OwnerReply:
    """The data owner's answer to request ``seq``: fresh ciphertexts and/or the stop bit."""

    seq: int
    kind: RequestKind
    ciphertexts: tuple[bytes, ...] = ()
    stop: bool = False


@dataclass(frozen=True)
class EncryptedDataset:
    """The owner's one-time upload: features and labels, one ciphertext per block.

    ``train_rows`` / ``val_rows`` give the real (unpadded) sample count of each block;
    ``initial`` holds the owner's first encrypted weights.
    """

    train_x: tuple[bytes, ...]
    train_y: tuple[bytes, ...]
    val_x: tuple[bytes, ...]
    train_rows: tuple[int, ...]
    val_rows: tuple[int, ...]
    initial: tuple[bytes, ...]


@dataclass
class StepStats:
    """What one step cost, for metrics and ``fedhe bench hetal``."""

    step: int
    epoch: int
    server_cpu_s: float = 0.0  # the trainer's thread plus its kernel workers
    client_cpu_s: float = 0.0
    # The trainer's thread plus, per parallel kernel call, its busiest worker: the wall
    # time on idle cores (equals server_cpu_s with one worker).
    server_critical_s: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    ops: dict[str, int] = field(default_factory=dict)


class ProtocolError(ValueError):
    """A reply that does not answer the pending request (wrong seq, kind or count)."""
