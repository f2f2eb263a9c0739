"""Where a transfer job's data owner comes from: the features of the data set the job
names (through the extractors and built-in tasks), its TransferParams, and the HETAL
``DataOwner`` (keys made on this device)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from fedhe_common.config.models import ClientConfig, JobConfig
from fedhe_common.errors import ConfigError
from fedhe_common.hetal.protocol import EncryptedDataset, OwnerReply, OwnerRequest


@dataclass(frozen=True)
class FeatureSplits:
    """The owner's features (extractor output, before preprocessing) and labels."""

    train_x: NDArray[np.float64]
    train_y: NDArray[np.int64]
    val_x: NDArray[np.float64]
    val_y: NDArray[np.int64]
    test_x: NDArray[np.float64]
    test_y: NDArray[np.int64]

    @property
    def classes(self) -> int:
        """Number of classes (largest label + 1)."""
        return int(max(self.train_y.max(), self.val_y.max(), self.test_y.max())) + 1


class Owner(Protocol):
    """What the job needs of ``fedhe_client.transfer.owner.DataOwner``."""

    def eval_keys(self) -> bytes: ...

    def encrypt_dataset(self) -> EncryptedDataset: ...

    def answer(self, request: OwnerRequest) -> OwnerReply: ...

    def keys_state(self) -> bytes: ...

    def data_state(self) -> bytes: ...

    def to_state(self) -> bytes: ...

    def result(self) -> Any: ...


FeatureSource = Callable[[ClientConfig, JobConfig], FeatureSplits]
OwnerCreate = Callable[[Any, FeatureSplits], Owner]
OwnerRestore = Callable[[bytes, bytes, bytes], Owner]  # (state, keys, data)


def site_features(config: ClientConfig, job: JobConfig) -> FeatureSplits:
    """Features of the data set the job names: a built-in transfer task (its own split and
    extractor), or this site's ``data`` through the job's extractor (an hf model's folder
    from this client's ``hf_models``, the ``task`` extractor from this client's task)."""
    from fedhe_client.transfer import datasets, extractors

    section = job.transfer
    assert section is not None
    if section.dataset != "site":
        s = datasets.load_transfer_task(section.dataset, section.seed)
    else:
        if config.data is None:
            raise ConfigError("the job trains on site data: give this client a data section")
        ext = section.extractor
        local = None
        if ext.kind == "hf":
            local = config.hf_models.get(ext.name or "")
            if local is None:
                raise ConfigError(f"hf_models in this client's config has no {ext.name!r}")
        task = None
        if ext.kind == "task":
            from fedhe_client.tasks.loading import resolve_task

            task = resolve_task(config, job)
        device = "cpu" if config.device == "auto" else config.device
        extractor = extractors.load_extractor(
            ext.kind, ext.name or "", ext.pooling, local, task, device
        )
        s = datasets.site_features(config.data, extractor, section.test_fraction)
    return FeatureSplits(
        np.asarray(s.x_train, dtype=np.float64), np.asarray(s.y_train, dtype=np.int64),
        np.asarray(s.x_val, dtype=np.float64), np.asarray(s.y_val, dtype=np.int64),
        np.asarray(s.x_test, dtype=np.float64), np.asarray(s.y_test, dtype=np.int64),
    )  # fmt: skip


def hetal_owner(params: Any, splits: FeatureSplits) -> Owner:
    """A new data owner (generates the job's keys on this device)."""
    from fedhe_client.transfer.owner import DataOwner

    owner: Owner = DataOwner.create(
        params, splits.train_x, splits.train_y, splits.val_x, splits.val_y
    )
    return owner


def hetal_restore(state: bytes, keys: bytes, data: bytes) -> Owner:
    """The data owner as persisted (per-step state, keys, data)."""
    from fedhe_client.transfer.owner import DataOwner

    owner: Owner = DataOwner.from_state(state, keys, data)
    return owner


def job_params(job: JobConfig, splits: FeatureSplits) -> Any:
    """TransferParams for this owner's data: features after preprocessing (bias included)."""
    from fedhe_client.transfer.preprocess import Preprocessor
    from fedhe_common.hetal.params import TransferParams

    features = Preprocessor.fit(splits.train_x).out_features
    return TransferParams.from_config(job.transfer, features, splits.classes)
