"""A client's local learner: a task (model + this site's data), train/evaluate/load."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from fedhe_client.peft_support import (
    PeftInfo,
    apply_peft,
    check_base,
    load_trainable,
    travelling_state,
    with_base,
)
from fedhe_client.tasks.base import ArrayData, FitConfig, Task
from fedhe_client.tasks.builtin import BuiltinTask
from fedhe_client.tasks.loading import resolve_task
from fedhe_client.trainer import describe_device, pick_device
from fedhe_common.config.models import ClientConfig, JobConfig
from fedhe_common.errors import ConfigError, InvalidArgumentError, ManifestMismatchError
from fedhe_common.mlbridge.flatten import build_manifest, flatten, unflatten
from fedhe_common.mlbridge.sensitivity import sensitivity_map

logger = logging.getLogger(__name__)


class LocalLearner:
    """Everything a client does with torch; the same code backs the plaintext reference."""

    def __init__(
        self,
        job: JobConfig,
        index: int,
        count: int,
        num_samples: int | None = None,
        device: str = "auto",
        progress: bool = False,
        torch_threads: int | None = None,
        task: Task | None = None,
    ) -> None:
        self.job = job
        self.index = index
        self.device = pick_device(device)
        logger.info("training on %s", describe_device(self.device))
        self.progress = progress
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.task: Task = task or BuiltinTask(job, index, count, num_samples)
        self.train_set = self.task.train_data()
        self.val_set = self.task.val_data()
        torch.manual_seed(job.job.seed)  # every client starts from the same model
        self.model = self.task.build_model()
        self.peft: PeftInfo | None = None
        if job.peft is not None:  # LoRA: only adapters (+ head) travel
            self.model, self.peft = apply_peft(self.model, job.peft)
            check_base(job.peft.base_sha256, self.peft)
        # The travelling vector's layout; under LoRA its layout_id also covers the frozen base.
        _, self._layout = flatten(self._travelling())
        self.manifest = self._layout if self.peft is None else with_base(self._layout, self.peft)
        pinned = job.task.layout_id if job.task is not None else None
        check_layout(pinned, self.manifest.layout_id)

    @property
    def sample_count(self) -> int:
        """n_i, this client's number of training samples (its FedAvg weight)."""
        return len(self.train_set)

    def train_round(self, number: int) -> tuple[np.ndarray, float]:
        """Train locally; return the flat model vector and the fit's loss."""
        hyper = FitConfig(
            training=self.job.training,
            params=self.job.task.params if self.job.task is not None else {},
            seed=self.job.job.seed * 100_003 + number * 1009 + self.index,
            round=number,
            device=self.device,
            progress=self.progress,
            rounds=self.job.job.rounds,
        )
        metrics = self.task.fit(self.model, self.train_set, hyper)
        vector, manifest = flatten(self._travelling())
        if manifest.layout_id != self._layout.layout_id:
            raise ManifestMismatchError("the task's fit changed the model's layout")
        return vector, float(metrics.get("loss", math.nan))

    def load_vector(self, vector: np.ndarray) -> None:
        """Replace the model's float parameters with ``vector`` (a global model)."""
        state = self._travelling()
        new = unflatten(vector, self._layout, state)
        if self.peft is None:
            self.model.load_state_dict(new)
        else:
            load_trainable(self.model, new, self.peft)

    def _travelling(self) -> dict[str, torch.Tensor]:
        """The tensors that are flattened: the whole state, or only the trainable ones."""
        return travelling_state(self.model, self.peft)

    def sensitivity(self, method: str, samples: int) -> np.ndarray:
        """Sensitivity map of the current model on (up to) ``samples`` of this client's data."""
        pick = getattr(self.task, "sensitivity_batches", None)
        if pick is not None:
            x, y = pick(samples)
        elif isinstance(self.train_set, ArrayData):
            x = torch.from_numpy(self.train_set.x[:samples])
            y = torch.from_numpy(self.train_set.y[:samples])
        else:
            raise ConfigError(f"task {self.task.name!r} has no sensitivity_batches")
        seed = self.job.job.seed * 7919 + self.index
        model = self.model.to(self.device)  # the map runs where training does
        x, y = x.to(self.device), y.to(self.device)
        scores = sensitivity_map(model, x, y, method, seed)  # type: ignore[arg-type]
        if self.peft is None:
            return scores
        full = {e.name: e for e in build_manifest(self.model.state_dict()).entries}
        picked = [scores[full[e.name].offset : full[e.name].offset + e.length] for e in
                  self._layout.entries]  # fmt: skip
        return np.concatenate(picked) if picked else np.zeros(0)

    def evaluate(self) -> dict[str, float]:
        """The task's metrics on this site's validation split."""
        return dict(self.task.evaluate(self.model, self.val_set))


def learner_for_client(config: ClientConfig, job: JobConfig) -> LocalLearner:
    """The learner of the task named in the client's own config (checked against the job)."""
    p = config.partition
    task = resolve_task(config, job)
    return LocalLearner(
        job,
        p.index,
        p.count,
        p.num_samples,
        config.device,
        config.progress,
        config.torch_threads,
        task=task,
    )


def check_layout(expected: str | None, actual: str) -> None:
    """Refuse a model whose layout fingerprint differs from the job's."""
    if expected and expected != actual:
        raise ManifestMismatchError(
            f"this client's model layout {actual[:16]}... differs from the job's "
            f"{expected[:16]}...: the sites must build the same model; refusing the job"
        )


def check_global(vector: np.ndarray, bound: float) -> None:
    """Refuse a decrypted global model with NaN/inf or absurd magnitude."""
    if not np.isfinite(vector).all():
        raise InvalidArgumentError("aggregate contains NaN or infinity")
    peak = float(np.abs(vector).max()) if vector.size else 0.0
    if peak > bound:
        raise InvalidArgumentError(f"aggregate magnitude {peak:.3g} exceeds the bound {bound:g}")
