"""pydantic models of every FedHE YAML file; unknown keys are errors."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedhe_common.crypto.presets import (
    DEFAULT_PRESET,
    MIN_THRESHOLD,
    MIN_THRESHOLD_CLIENTS,
    PRESETS,
)

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_id(value: str) -> str:
    if not _ID.match(value):
        raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-'")
    return value


# ----------------------------------------------------------------------------- job
class JobSection(_Model):
    name: str
    rounds: int = Field(ge=1, le=100_000)
    seed: int = 0
    # Largest model (values per update) the server accepts before the first upload pins it.
    max_values: int = Field(default=20_000_000, ge=1, le=2**31 - 1)

    _name = field_validator("name")(_check_id)


class ParticipantsSection(_Model):
    min_clients: int = Field(default=2, ge=1)
    round_timeout_s: float = Field(default=300.0, gt=0)
    wait_after_min_s: float = Field(default=5.0, ge=0)
    expected_clients: int | None = Field(default=None, ge=1)
    heartbeat_interval_s: float = Field(default=30.0, gt=0)
    # Enrolled clients: only they may register, get the job's keys and aggregates.
    # None: any client identity of the server may register (no isolation between jobs).
    clients: list[str] | None = Field(default=None, min_length=1, max_length=10_000)
    # Largest sample_count (FedAvg weight) one client may declare; None: derived from
    # the preset's weight budget and the expected client count (see the server).
    max_sample_count: int | None = Field(default=None, ge=1, le=2**53)
    # Threshold keys: pinned Ed25519 identity keys (client_id -> sha256 hex of the key),
    # the admin's word; parties refuse any other key. None: trust on first use.
    identity_keys: dict[str, str] | None = Field(default=None, max_length=10_000)

    @field_validator("identity_keys")
    @classmethod
    def _identity_pins(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for client, digest in (value or {}).items():
            _check_id(client)
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
                raise ValueError(f"identity_keys[{client!r}] must be a sha256 hex digest")
        return value

    @field_validator("clients")
    @classmethod
    def _client_ids(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for client in value:
                _check_id(client)
            if len(set(value)) != len(value):
                raise ValueError("participants.clients lists a client twice")
        return value

    @model_validator(mode="after")
    def _enough_clients(self) -> ParticipantsSection:
        if self.clients is not None and self.min_clients > len(self.clients):
            raise ValueError("participants.min_clients exceeds the enrolled clients")
        return self


class EncryptionSection(_Model):
    mode: Literal["ckks", "none"] = "ckks"
    preset: str = DEFAULT_PRESET
    clip_bound: float | None = Field(default=None, gt=0)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown preset; choose one of {', '.join(sorted(PRESETS))}")
        if PRESETS[value].baseline_only:
            raise ValueError("this preset is a benchmark baseline only")
        return value


class KeysSection(_Model):
    """Who can decrypt: one shared key (default) or t of n clients together."""

    mode: Literal["single", "threshold"] = "single"
    parties: int | None = Field(default=None, ge=2, le=64)
    threshold: int | None = Field(default=None, ge=1)
    preset: Literal["threshold-strict", "threshold-practical"] = "threshold-strict"
    # t = 1 makes every party's share the whole key: threshold protection off.

    @model_validator(mode="after")
    def _threshold_fields(self) -> KeysSection:
        if self.mode == "threshold":
            if self.parties is None:
                raise ValueError("threshold mode needs keys.parties")
            if self.threshold is None or self.threshold > self.parties:
                raise ValueError("keys.threshold must be set and <= keys.parties")
            if self.threshold < MIN_THRESHOLD:
                raise ValueError(
                    f"keys.threshold must be at least {MIN_THRESHOLD}: with threshold 1 every "
                    "party's share is the whole secret key"
                )
        return self


# The client's model zoo (fedhe_client.zoo; a unit test keeps the two lists equal).
ZooName = Literal[
    "linear",
    "mlp",
    "lenet",
    "lenet-dlg",
    "cnn",
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenetv2",
    "vit-base",
    "bert-base",
    "gpt-mini",
]


class ModelSection(_Model):
    name: ZooName = "mlp"
    hidden: int = Field(default=64, ge=1)
    init: Literal["default", "dlg"] = "default"


class DataSection(_Model):
    dataset: Literal["digits", "digits28", "digits32", "npz"] = "digits"
    path: str | None = None
    partition: Literal["iid", "dirichlet"] = "iid"
    dirichlet_alpha: float = Field(default=0.5, gt=0)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _npz_needs_path(self) -> DataSection:
        if self.dataset == "npz" and not self.path:
            raise ValueError("dataset 'npz' needs data.path")
        return self


_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
TaskParam = str | int | float | bool | list[str | int | float | bool]


class TaskSection(_Model):
    """A job names a task by its registered name and hyperparameters, never by code path."""

    name: str
    params: dict[str, TaskParam] = {}
    # Optional: the model layout fingerprint every client's model must have (checked
    # before round 1); without it the first committed upload pins the layout.
    layout_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{8,128}$")

    @field_validator("name")
    @classmethod
    def _registered_name(cls, value: str) -> str:
        if any(c in value for c in ":./\\"):
            raise ValueError(
                "a job names a task by its registered name only, never a module path"
            )
        if not _TASK_NAME.match(value):
            raise ValueError("task name must be 1-64 characters of letters, digits, '_', '-'")
        return value


class TrainingSection(_Model):
    local_epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    max_update_abs: float = Field(default=1e3, gt=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    weight_decay: float = Field(default=0.0, ge=0, lt=1)
    # Learning rate per round: constant, cosine from lr to lr_min over the job's rounds,
    # or step (times lr_gamma every lr_step_rounds rounds).
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    lr_min: float = Field(default=0.0, ge=0)
    lr_step_rounds: int = Field(default=10, ge=1)
    lr_gamma: float = Field(default=0.1, gt=0, le=1)
    # Clip the gradient's global L2 norm to this before each step (None: no clipping).
    clip_grad_norm: float | None = Field(default=None, gt=0)
    # FedProx: adds prox_mu / 2 * ||w - w_global||^2 to the local loss (0: plain FedAvg).
    prox_mu: float = Field(default=0.0, ge=0, le=1e3)
    # Mixed precision (float16 autocast + gradient scaling) on CUDA clients; ignored on CPU.
    amp: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> TrainingSection:
        if self.momentum and self.optimizer != "sgd":
            raise ValueError("training.momentum applies to optimizer sgd only")
        if self.lr_min >= self.lr and self.lr_schedule == "cosine":
            raise ValueError("training.lr_min must be below training.lr")
        return self


class SelectiveSection(_Model):
    """FedML-HE selective parameter encryption; ratio 1.0 (default) encrypts everything."""

    ratio: float = Field(default=1.0, ge=0, le=1)
    include_first_last: bool = False
    include_layers: list[str] = []
    sensitivity: Literal["exact", "trueclass", "random"] = "exact"
    samples: int = Field(default=64, ge=1, le=100_000)

    @property
    def enabled(self) -> bool:
        """True when some coordinates travel in plaintext."""
        return self.ratio < 1.0


class DPSection(_Model):
    """Noise on the plaintext (unencrypted) part of updates, after clipping."""

    mechanism: Literal["none", "laplace", "gaussian"] = "none"
    scale: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _scale_with_mechanism(self) -> DPSection:
        if self.mechanism != "none" and self.scale <= 0:
            raise ValueError("dp.scale must be > 0 when a mechanism is set")
        return self


class PeftSection(_Model):
    """Parameter-efficient fine-tuning: only adapters (and the head) travel, encrypted.

    The frozen base never leaves a client; its sha256 is part of the layout fingerprint,
    and ``base_sha256`` (optional) pins it in the job, checked before round 1.
    """

    method: Literal["lora"] = "lora"
    r: int = Field(default=8, ge=1, le=4096)
    alpha: int = Field(default=16, ge=1, le=65536)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    # None: query/value (BERT), q_proj/v_proj (ViT, Llama) or c_attn (GPT-2).
    target_modules: list[str] | None = None
    # Trained in full besides the adapters; None: the model's last Linear (its head).
    modules_to_save: list[str] | None = None
    base_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class TransferExtractorSection(_Model):
    """The data owner's frozen feature extractor (it runs on the client only)."""

    kind: Literal["builtin", "task", "hf"] = Field(
        default="builtin",
        description="builtin: the project's extractors; task: the frozen torch module of "
        "the client's task; hf: a transformers model from a folder the CLIENT config names",
    )
    # builtin: the extractor's name (None: the dataset's default); hf: a key of the
    # client config's hf_models (never a path: the job does not choose client files).
    name: str | None = None
    # hf: the CLS token's last hidden state, or the mean over tokens.
    pooling: Literal["cls", "mean"] = "cls"

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and not _TASK_NAME.match(value):
            raise ValueError("extractor name must be 1-64 letters, digits, '_', '-' (no path)")
        return value


class TransferSection(_Model):
    """HETAL: the server trains a softmax head on the one data owner's encrypted features."""

    mode: Literal["client", "server"] = Field(
        default="client",
        description="client: the owner computes the exact softmax on its decrypted logits; "
        "server: a polynomial softmax on ciphertexts",
    )
    extractor: TransferExtractorSection = TransferExtractorSection()
    dataset: Literal["digits", "digits-transfer", "site"] = Field(
        default="digits", description="a built-in data set, or site: the client's data section"
    )
    # Mini-batch size (samples per step).
    batch: int = Field(default=128, ge=64, le=4096)
    # Learning rate of the softmax head.
    lr: float = Field(default=4.0, gt=0, le=100)
    # Epochs at most; early stopping may end sooner.
    max_epochs: int = Field(default=5, ge=1, le=1000)
    # Stop after this many epochs without a lower validation loss (best epoch kept).
    patience: int = Field(default=3, ge=1, le=1000)
    # Nesterov accelerated gradient (else plain mini-batch gradient descent).
    nesterov: bool = True
    # Seeds the owner's split, batch order and initial weights.
    seed: int = Field(default=0, ge=0)
    # Share of the owner's samples held out for validation (early stopping).
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    # Share held out as the test split (never uploaded).
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    # Train on at most this many samples (None: all); small runs and tests.
    max_train_samples: int | None = Field(default=None, ge=1)
    # Server processes running the encrypted kernels of one step (1: in the trainer's thread).
    workers: int = Field(default=1, ge=1, le=64)
    # Largest evaluation-key blob (public + relinearisation + Galois keys) accepted.
    max_eval_key_bytes: int = Field(default=1 << 30, ge=1 << 16, le=8 << 30)
    # Largest encrypted data set (all ciphertexts of the one-time upload) accepted.
    max_dataset_bytes: int = Field(default=8 << 30, ge=1 << 16, le=64 << 30)

    @model_validator(mode="after")
    def _fractions(self) -> TransferSection:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("transfer.val_fraction + transfer.test_fraction must be < 0.9")
        return self


class AggregationSection(_Model):
    """How the server adds a committed upload into the round's sums (issue 15)."""

    # Worker processes adding ranges of chunks in parallel (1: in the server process;
    # single-key-compact sums always are, whatever this says).
    workers: int = Field(default=1, ge=1, le=256)
    # local: spawned processes on the server's host; ray: Ray tasks on the cluster that
    # RAY_ADDRESS names (the server's environment, never the job), sharing state_dir.
    backend: Literal["local", "ray"] = "local"


class JobConfig(_Model):
    """A federated job: what to train, how to encrypt, when a round closes."""

    version: Literal[1] = 1
    job: JobSection
    participants: ParticipantsSection = ParticipantsSection()
    encryption: EncryptionSection = EncryptionSection()
    keys: KeysSection = KeysSection()
    selective: SelectiveSection = SelectiveSection()
    dp: DPSection = DPSection()
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    training: TrainingSection = TrainingSection()
    # None: the built-in task chosen by the model and data sections.
    task: TaskSection | None = None
    # None: every float parameter and buffer travels (full fine-tuning).
    peft: PeftSection | None = None
    # HETAL transfer learning (job type transfer): one data owner, keys made on its device.
    transfer: TransferSection | None = None
    aggregation: AggregationSection = AggregationSection()

    @property
    def threshold_keys(self) -> bool:
        """True when no single party can decrypt (keys.mode threshold)."""
        return self.keys.mode == "threshold"

    @property
    def preset_name(self) -> str:
        """The CKKS preset in effect (keys.preset under threshold keys)."""
        return self.keys.preset if self.threshold_keys else self.encryption.preset

    @model_validator(mode="after")
    def _selective_needs_encryption(self) -> JobConfig:
        if self.selective.enabled and self.encryption.mode != "ckks":
            raise ValueError("selective.ratio < 1 needs encryption.mode ckks")
        if self.threshold_keys:
            if self.encryption.mode != "ckks":
                raise ValueError("keys.mode threshold needs encryption.mode ckks")
            named = "preset" in self.encryption.model_fields_set
            if named and self.encryption.preset != self.keys.preset:
                raise ValueError(
                    "with threshold keys the preset is keys.preset (leave encryption.preset out)"
                )
            if self.participants.min_clients > (self.keys.parties or 0):
                raise ValueError("participants.min_clients exceeds keys.parties")
            if self.participants.min_clients < MIN_THRESHOLD_CLIENTS:
                raise ValueError(
                    f"participants.min_clients must be at least {MIN_THRESHOLD_CLIENTS} with "
                    "threshold keys: the parties would decrypt (nearly) single uploads"
                )
        if self.dp.mechanism != "none" and not self.selective.enabled:
            raise ValueError("dp noise applies to the plaintext part: set selective.ratio < 1")
        if self.transfer is not None:
            self._check_transfer()
        return self

    def _check_transfer(self) -> None:
        """A transfer job has exactly one data owner, who makes the keys."""
        part = self.participants
        if part.min_clients != 1 or (part.expected_clients or 1) != 1:
            raise ValueError("a transfer job has one data owner: participants.min_clients 1")
        if part.clients is not None and len(part.clients) != 1:
            raise ValueError("a transfer job enrols exactly one client (the data owner)")
        if self.threshold_keys or self.encryption.mode != "ckks" or self.selective.enabled:
            raise ValueError(
                "a transfer job uses the owner's CKKS keys (keys.mode single, "
                "encryption.mode ckks, no selective encryption)"
            )
        if self.peft is not None:
            raise ValueError("a transfer job trains a head on features: no peft section")


# ------------------------------------------------------------------------ services
class TLSSection(_Model):
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None


def host_of(address: str) -> str:
    """The host part of ``host:port`` (IPv6 brackets removed)."""
    return address.rsplit(":", 1)[0].strip("[]")


def _loopback(address: str) -> bool:
    host = host_of(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Listener(_Model):
    listen: str = "127.0.0.1:0"
    insecure: bool = False
    tls: TLSSection | None = None

    @model_validator(mode="after")
    def _tls_or_loopback(self) -> _Listener:
        if self.insecure and not _loopback(self.listen):
            raise ValueError("insecure (no TLS) is only allowed on a loopback listen address")
        if not self.insecure and not (self.tls and self.tls.cert_file and self.tls.key_file):
            raise ValueError("TLS needs tls.cert_file and tls.key_file (or insecure: true)")
        return self


class IdentitySection(_Model):
    id: str
    role: Literal["server", "client", "admin"]
    # Optional with mutual TLS: the caller is then named by its certificate's CN (= id).
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    _id = field_validator("id")(_check_id)


class KeyAuthConfig(_Listener):
    """``fedhe-keyauth serve`` configuration."""

    version: Literal[1] = 1
    state_dir: str
    identities: list[IdentitySection]


class PeerSection(_Model):
    address: str
    # Bearer token (loopback tests); None: this side is named by its certificate (mutual TLS).
    token_file: str | None = None
    ca_file: str | None = None
    # This side's certificate, for peers that require mutual TLS (their tls.ca_file).
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    @model_validator(mode="after")
    def _tls_or_loopback(self) -> PeerSection:
        if self.insecure and not _loopback(self.address):
            raise ValueError("insecure (no TLS) is only allowed to a loopback address")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        if self.token_file is None and (self.insecure or self.cert_file is None):
            raise ValueError("token_file is needed unless cert_file/key_file name this side")
        return self


class DashboardSection(_Model):
    """The read-only web dashboard (admin identities only; HTTPS with the server's TLS)."""

    listen: str = Field(
        default="127.0.0.1:0",
        description="Host:port of the dashboard (port 0: any free port, printed at start); "
        "outside loopback only with the server's TLS.",
    )
    poll_interval_s: float = Field(
        default=3.0, ge=0.5, le=60, description="How often the page refreshes its data."
    )


class ServerConfig(_Listener):
    """``fedhe-server serve`` configuration."""

    version: Literal[1] = 1
    state_dir: str
    keyauth: PeerSection
    identities: list[IdentitySection]
    metrics_port: int = Field(default=0, ge=0, le=65535)
    dashboard: DashboardSection | None = Field(
        default=None, description="Serve the web dashboard (off when absent)."
    )
    # Uploads (and aggregate downloads) streaming at once: each holds up to one gRPC
    # flow-control window in memory; more clients wait (BeginUpload says busy, they retry).
    transfer_slots: int = Field(default=16, ge=1, le=4096)
    # Bytes one stream may send ahead of the server's reads, in KiB. Fixed (default 512:
    # ~5 MB/s per stream at 100 ms round trip, ~50 MB/s at 10 ms) keeps the server's
    # memory flat in the clients; 0 lets gRPC grow it by bandwidth probing (long fast
    # links; then memory follows the uploads in flight, ~2.5 MB each on a LAN).
    stream_window_kib: int = Field(default=512, ge=0, le=1 << 20)

    @model_validator(mode="after")
    def _dashboard_tls_or_loopback(self) -> ServerConfig:
        if self.dashboard and self.insecure and not _loopback(self.dashboard.listen):
            raise ValueError("dashboard.listen outside loopback needs TLS (insecure is true)")
        return self


class PartitionSection(_Model):
    index: int = Field(ge=0)
    count: int = Field(ge=1)
    num_samples: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _index_in_range(self) -> PartitionSection:
        if self.index >= self.count:
            raise ValueError("partition.index must be < partition.count")
        return self


class SiteDataSection(_Model):
    """This site's own data (read locally; nothing downloads)."""

    format: Literal["images", "npz", "csv", "parquet", "hf", "tokens"]
    path: str
    # A separate validation set in the same format; else val_fraction of path.
    val_path: str | None = None
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    split_seed: int = 0
    # images: class sub-folders; every image resized to image_size, 1 or 3 channels.
    image_size: list[int] = Field(default=[28, 28], min_length=2, max_length=2)
    channels: Literal[1, 3] = 1
    # Class names in label order (keeps labels equal across sites); default: sorted folders.
    classes: list[str] | None = None
    # Tables (csv, parquet, hf): the label column; features: the other numeric columns.
    label_column: str = "label"
    feature_columns: list[str] | None = None
    # tokens: one example a line, "label<TAB>space-separated token ids", padded with pad_id
    # (or truncated) to seq_len.
    seq_len: int = Field(default=128, ge=1, le=8192)
    pad_id: int = Field(default=0, ge=0)


class JobFilterSection(_Model):
    """Which jobs a long-lived client agent takes (empty lists: any job it is enrolled in)."""

    names: list[str] = Field(default=[], description="job names (ids) this site takes")
    tasks: list[str] = Field(default=[], description="task names this site takes")


_TASK_REF = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*|[A-Za-z0-9][\w-]*)$")


class ClientConfig(_Model):
    """``fedhe-client run`` configuration."""

    version: Literal[1] = 1
    client_id: str
    server: PeerSection
    keyauth: PeerSection
    job_id: str | None = None
    partition: PartitionSection
    device: Literal["auto", "cpu", "cuda"] = "auto"
    state_dir: str | None = Field(
        default=None, description="where a threshold party keeps its key share and ledger"
    )
    torch_threads: int = Field(default=0, ge=0, description="0: torch's default")
    export_dir: str | None = None
    progress: bool = True
    tensorboard_dir: str | None = Field(
        default=None,
        description="write TensorBoard scalars per round to `<dir>/<job_id>/` "
        "(needs the extra `fedhe[tensorboard]`); null: off",
    )
    # This site's task: "module:attr" or an entry point name in group fedhe.tasks
    # (None: the built-in task of the job's model/data sections).
    task: str | None = None
    data: SiteDataSection | None = None
    # The model out under state_dir/models/<job>/: the last round's global model only,
    # or also every round's (round-<n>/).
    keep_models: Literal["last", "every"] = "last"
    # Long-lived agent (``fedhe-client run`` without --once): its allow-list of jobs, and
    # the cap of its reconnect backoff while the server or key authority is down.
    jobs: JobFilterSection = Field(default_factory=JobFilterSection)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=600)
    # Transfer jobs: local folders of transformers models, by the name a job's
    # transfer.extractor.name (kind hf) uses; the job never names a path.
    hf_models: dict[str, str] = Field(default={}, max_length=1000)

    _id = field_validator("client_id")(_check_id)

    @field_validator("task")
    @classmethod
    def _task_ref(cls, value: str | None) -> str | None:
        if value is not None and not _TASK_REF.match(value):
            raise ValueError("task must be 'module:attr' or an entry point name in fedhe.tasks")
        return value
