"""A client's local learner: its data partition, its model, train/evaluate/load."""

from __future__ import annotations

import numpy as np
import torch

from fedhe_client.data import load_dataset, partition
from fedhe_client.models import build_model
from fedhe_client.trainer import evaluate, pick_device, train
from fedhe_common.config.models import JobConfig
from fedhe_common.errors import InvalidArgumentError
from fedhe_common.mlbridge.flatten import flatten, unflatten
from fedhe_common.mlbridge.sensitivity import sensitivity_map


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
    ) -> None:
        self.job = job
        self.index = index
        self.device = pick_device(device)
        self.progress = progress
        if torch_threads:
            torch.set_num_threads(torch_threads)
        data = load_dataset(job.data, job.job.seed)
        self.x, self.y = partition(data, job.data, index, count, job.job.seed, num_samples)
        self.x_test, self.y_test = data.x_test, data.y_test
        torch.manual_seed(job.job.seed)  # every client starts from the same model
        self.model = build_model(
            job.model.name, data.shape, data.classes, job.model.hidden, job.model.init
        )
        _, self.manifest = flatten(self.model.state_dict())

    @property
    def sample_count(self) -> int:
        """n_i, this client's number of training samples (its FedAvg weight)."""
        return len(self.y)

    def train_round(self, number: int) -> tuple[np.ndarray, float]:
        """Train locally; return the flat model vector and the last epoch's loss."""
        seed = self.job.job.seed * 100_003 + number * 1009 + self.index
        loss = train(
            self.model,
            self.x,
            self.y,
            self.job.training,
            seed,
            self.device,
            self.progress,
            f"round {number}",
        )
        vector, manifest = flatten(self.model.state_dict())
        assert manifest.layout_id == self.manifest.layout_id
        return vector, loss

    def load_vector(self, vector: np.ndarray) -> None:
        """Replace the model's float parameters with ``vector`` (a global model)."""
        state = self.model.state_dict()
        self.model.load_state_dict(unflatten(vector, self.manifest, state))

    def sensitivity(self, method: str, samples: int) -> np.ndarray:
        """Sensitivity map of the current model on (up to) ``samples`` of this client's data."""
        x = torch.from_numpy(self.x[:samples])
        y = torch.from_numpy(self.y[:samples])
        seed = self.job.job.seed * 7919 + self.index
        return sensitivity_map(self.model, x, y, method, seed)  # type: ignore[arg-type]

    def evaluate(self) -> dict[str, float]:
        """Accuracy and loss on the shared test split."""
        return evaluate(self.model, self.x_test, self.y_test, self.device)


def check_global(vector: np.ndarray, bound: float) -> None:
    """Refuse a decrypted global model with NaN/inf or absurd magnitude."""
    if not np.isfinite(vector).all():
        raise InvalidArgumentError("aggregate contains NaN or infinity")
    peak = float(np.abs(vector).max()) if vector.size else 0.0
    if peak > bound:
        raise InvalidArgumentError(f"aggregate magnitude {peak:.3g} exceeds the bound {bound:g}")
