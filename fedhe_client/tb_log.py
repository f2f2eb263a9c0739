"""Optional TensorBoard logging on the client (extra ``fedhe[tensorboard]``, off by default).

With ``tensorboard_dir`` set in the client config, each job gets one run directory,
``<tensorboard_dir>/<job_id>/``, and every round whose global model this client applied
adds its final metrics there as scalars (step = round): accuracy, loss, samples, the
per-step seconds measured here (train, encrypt, upload, download, decrypt) and the bytes
each way. The writer is tensorboardX: a small pure-Python wheel whose only needs (numpy,
protobuf, packaging) are already FedHE dependencies, so an edge device does not carry the
TensorBoard web server (``tensorboard``) just to write event files.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
from pathlib import Path
from typing import Any, Protocol

from fedhe_common.config.models import ClientConfig
from fedhe_common.errors import ConfigError, InvalidArgumentError

logger = logging.getLogger(__name__)
WRITER_MODULE = "tensorboardX"
INSTALL_HINT = "pip install 'fedhe[tensorboard]' (tensorboardX)"
# A job id becomes a directory name: one plain path component (the server's id rule).
_JOB_DIR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Metric name -> scalar tag; TensorBoard groups tags by the part before the '/'.
TAGS: dict[str, str] = {
    "accuracy": "round/accuracy",
    "loss": "round/loss",
    "samples": "round/samples",
    "contributors": "round/contributors",
    "train_s": "step_seconds/train",
    "encrypt_s": "step_seconds/encrypt",
    "upload_s": "step_seconds/upload",
    "download_s": "step_seconds/download",
    "decrypt_s": "step_seconds/decrypt",
    "he_s": "step_seconds/he_total",
    "upload_bytes": "bytes/upload",
    "download_bytes": "bytes/download",
}
MAX_OTHER_METRICS = 64  # a task's own metrics go under "task/<name>", at most this many


class RoundLog(Protocol):
    """Where a client's final per-round metrics go besides the server."""

    def log_round(self, number: int, metrics: dict[str, float]) -> None:
        """Record one round's final metrics."""

    def close(self) -> None:
        """Flush and release the log."""


class NoRoundLog:
    """TensorBoard logging is off: nothing is written."""

    def log_round(self, number: int, metrics: dict[str, float]) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""


def check_available(config: ClientConfig) -> None:
    """Fail at start, with the extra to install, when the option is set but the writer is not."""
    if config.tensorboard_dir is None:
        return
    if importlib.util.find_spec(WRITER_MODULE) is None:
        raise ConfigError(
            f"tensorboard_dir is set ({config.tensorboard_dir}) but {WRITER_MODULE} is not "
            f"installed: {INSTALL_HINT}, or remove tensorboard_dir"
        )


def tag_for(name: str) -> str:
    """The scalar tag of a metric name."""
    return TAGS.get(name, f"task/{name}")


class TensorBoardRoundLog:
    """Scalars per round in ``<root>/<job_id>/`` (tensorboardX event files)."""

    def __init__(self, root: str, job_id: str) -> None:
        if not _JOB_DIR.match(job_id) or job_id in {".", ".."}:
            raise InvalidArgumentError(f"job id {job_id!r} cannot name a TensorBoard run folder")
        from tensorboardX import SummaryWriter  # the optional extra, imported only when on

        self.run_dir = Path(root) / job_id
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"tensorboard_dir: cannot create {self.run_dir}: {exc}") from exc
        self._writer: Any = SummaryWriter(logdir=str(self.run_dir), flush_secs=30)
        self._others: set[str] = set()
        logger.info("TensorBoard run folder: %s", self.run_dir)

    def log_round(self, number: int, metrics: dict[str, float]) -> None:
        """One scalar per finite metric at step ``number``, then flush."""
        for name, value in sorted(metrics.items()):
            if not math.isfinite(value):
                continue
            if name not in TAGS and name not in self._others:
                if len(self._others) >= MAX_OTHER_METRICS:
                    continue
                self._others.add(name)
            self._writer.add_scalar(tag_for(name), float(value), global_step=number)
        self._writer.flush()  # a round is minutes apart: visible in TensorBoard at once

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


def open_round_log(config: ClientConfig, job_id: str) -> RoundLog:
    """The job's round log: TensorBoard when ``tensorboard_dir`` is set, else nothing."""
    if config.tensorboard_dir is None:
        return NoRoundLog()
    check_available(config)
    return TensorBoardRoundLog(config.tensorboard_dir, job_id)
