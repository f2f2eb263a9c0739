"""The built-in task: a zoo model (job ``model:``) on the job's data set or site data."""

from __future__ import annotations

from torch import nn

from fedhe_client.data import load_dataset, partition
from fedhe_client.tasks.base import ArrayData, ArrayTask
from fedhe_client.tasks.sitedata import load_site_data
from fedhe_client.zoo import build_model, zoo_model
from fedhe_common.config.models import JobConfig, SiteDataSection
from fedhe_common.errors import ConfigError

BUILTIN_TASK = "builtin"


class BuiltinTask(ArrayTask):
    """``demo``/``simulate``: a partition of a shared set, or this site's own data."""

    name = BUILTIN_TASK

    def __init__(
        self,
        job: JobConfig,
        index: int = 0,
        count: int = 1,
        num_samples: int | None = None,
        site: SiteDataSection | None = None,
    ) -> None:
        self.job = job
        if site is None:
            data = load_dataset(job.data, job.job.seed)
            x, y = partition(data, job.data, index, count, job.job.seed, num_samples)
            train, val = ArrayData(x, y), ArrayData(data.x_test, data.y_test)
            self.classes = data.classes
        else:
            train, val, names = load_site_data(site)
            self.classes = len(names) if names else int(max(train.y.max(), val.y.max())) + 1
        super().__init__(train, val)
        entry = zoo_model(job.model.name)
        want = 4 if entry.inputs == "image" else 2
        if train.x.ndim != want:
            kind = "images (N, C, H, W)" if want == 4 else "token ids (N, L)"
            raise ConfigError(
                f"model {entry.name!r} needs {kind}; this data has shape {train.x.shape}"
            )
        self.shape = tuple(int(d) for d in train.x.shape[1:])

    def build_model(self) -> nn.Module:
        """The job's zoo model for this data's shape and classes."""
        m = self.job.model
        try:
            return build_model(m.name, self.shape, self.classes, m.hidden, m.init)
        except ValueError as exc:
            raise ConfigError(f"model {m.name!r}: {exc}") from None
