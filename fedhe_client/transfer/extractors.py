"""Frozen feature extractors the data owner runs before encrypting: torch modules and
``transformers`` models from a local folder (never downloaded).

Every extractor maps a batch of inputs to float32 features (n x dim) under
``torch.no_grad`` in eval mode, in batches, reporting progress as (done, total).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from fedhe_common.errors import ConfigError

Progress = Callable[[int, int], None]
MAX_BATCH = 4096
# transformers 5 builds an empty (all-unknown) tokenizer for a folder without these.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


class Pooling(StrEnum):
    """How a transformer's token states become one vector."""

    CLS = "cls"  # the first token of last_hidden_state (ViT, BERT's [CLS])
    MEAN = "mean"  # the attention-masked mean over tokens (sentence-transformers, MPNet)


class ExtractorKind(StrEnum):
    """Which extractor a transfer job names."""

    IDENTITY = "identity"  # the inputs themselves, flattened (raw digits pixels)
    BUILTIN = "builtin"  # the project's pre-trained digits CNN (name "digits-cnn")
    TASK = "task"  # a frozen module of the client's own task
    HF = "hf"  # a transformers model from a local folder


@runtime_checkable
class FeatureExtractor(Protocol):
    """A frozen map from inputs to (n, dim) float32 features."""

    dim: int

    def extract(self, inputs: Any, progress: Progress | None = None) -> np.ndarray:
        """Features of ``inputs`` (n x dim, float32)."""
        ...


def _check_batch(batch_size: int) -> int:
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be in [1, {MAX_BATCH}], got {batch_size}")
    return batch_size


def _freeze(module: nn.Module, device: torch.device) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module.to(device)


class IdentityExtractor:
    """The inputs flattened to (n, dim) float32: no model (e.g. raw digits pixels)."""

    def __init__(self, dim: int) -> None:
        self.dim = int(dim)

    def extract(self, inputs: Any, progress: Progress | None = None) -> np.ndarray:
        """``inputs`` reshaped to (n, dim)."""
        x = np.asarray(inputs, dtype=np.float32).reshape(len(inputs), -1)
        if x.shape[1] != self.dim:
            raise ValueError(f"inputs have {x.shape[1]} values per sample, expected {self.dim}")
        if progress is not None:
            progress(len(x), len(x))
        return x


class TorchModuleExtractor:
    """Any frozen torch module; its output per sample is flattened to ``dim`` values.

    ``dim`` is probed with one zero input of ``input_shape`` unless given.
    """

    def __init__(
        self,
        module: nn.Module,
        input_shape: Sequence[int] | None = None,
        dim: int | None = None,
        batch_size: int = 256,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.module = _freeze(module, self.device)
        self.batch_size = _check_batch(batch_size)
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape else None
        if dim is None:
            if self.input_shape is None:
                raise ValueError("TorchModuleExtractor needs input_shape or dim")
            with torch.no_grad():
                probe = torch.zeros((1, *self.input_shape), device=self.device)
                dim = int(self.module(probe).reshape(1, -1).shape[1])
        self.dim = int(dim)

    def extract(self, inputs: Any, progress: Progress | None = None) -> np.ndarray:
        """Features of (n, ...) inputs (numpy or tensor), batch by batch."""
        x = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"inputs of shape {tuple(x.shape[1:])}, expected {self.input_shape}")
        out = np.empty((len(x), self.dim), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(x), self.batch_size):
                batch = x[start : start + self.batch_size].to(self.device)
                feats = self.module(batch).reshape(len(batch), -1)
                if feats.shape[1] != self.dim:
                    raise ValueError(f"the module gave {feats.shape[1]} features, not {self.dim}")
                out[start : start + len(batch)] = feats.float().cpu().numpy()
                if progress is not None:
                    progress(start + len(batch), len(x))
        return out


def _local_folder(folder: str | Path) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{path}: no such model folder (models are never downloaded)")
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{path}: no config.json; save the model there with save_pretrained(folder)"
        )
    return path


class HFExtractor:
    """A ``transformers`` model from a local folder: ViT-style images or BERT/MPNet text.

    Images: float (n, C, H, W) in [0, 1], resized to the config's ``image_size``, grey
    replicated to RGB, normalised with the folder's preprocessor_config.json if present.
    Text: a list of strings (needs the folder's tokenizer) or token ids (n, L) with the
    config's ``pad_token_id`` as padding. Pooling defaults to CLS for images, mean for text.
    """

    def __init__(
        self,
        folder: str | Path,
        pooling: Pooling | str | None = None,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        max_length: int = 128,
    ) -> None:
        from transformers import AutoConfig, AutoModel

        self.folder = _local_folder(folder)
        try:
            self.config = AutoConfig.from_pretrained(str(self.folder), local_files_only=True)
            model = AutoModel.from_pretrained(str(self.folder), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{self.folder}: cannot load the model: {exc}") from None
        self.device = torch.device(device)
        self.model = _freeze(model, self.device)
        self.vision = hasattr(self.config, "image_size") and hasattr(self.config, "num_channels")
        default = Pooling.CLS if self.vision else Pooling.MEAN
        try:
            self.pooling = Pooling(pooling) if pooling is not None else default
        except ValueError:
            raise ConfigError(f"pooling must be 'cls' or 'mean', got {pooling!r}") from None
        self.dim = int(self.config.hidden_size)
        self.batch_size = _check_batch(batch_size)
        self.max_length = max_length
        self.pad_id = int(getattr(self.config, "pad_token_id", None) or 0)
        self._mean, self._std = self._normalisation()
        self._tokenizer: Any = None

    def _normalisation(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        file = self.folder / "preprocessor_config.json"
        if not self.vision or not file.is_file():
            return None, None
        try:
            cfg = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{file}: unreadable: {exc}") from None
        if not cfg.get("do_normalize", True) or "image_mean" not in cfg:
            return None, None
        shape = (1, -1, 1, 1)
        mean = torch.tensor(cfg["image_mean"], dtype=torch.float32).reshape(shape)
        return mean, torch.tensor(cfg["image_std"], dtype=torch.float32).reshape(shape)

    def _tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            if not any((self.folder / f).is_file() for f in TOKENIZER_FILES):
                raise ConfigError(
                    f"{self.folder}: text inputs need a tokenizer saved in the folder "
                    f"(one of {', '.join(TOKENIZER_FILES)}); or pass token ids"
                )
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(
                    str(self.folder), local_files_only=True
                )
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(
                    f"{self.folder}: text inputs need a tokenizer saved in the folder: {exc}"
                ) from None
        enc = self._tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"]

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        channels, size = int(self.config.num_channels), int(self.config.image_size)
        if x.ndim != 4:
            raise ValueError(f"image inputs must be (n, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != channels:
            raise ValueError(f"images have {x.shape[1]} channels, the model wants {channels}")
        if tuple(x.shape[2:]) != (size, size):
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear")
        if self._mean is not None and self._std is not None:
            x = (x - self._mean) / self._std
        return x

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.pooling is Pooling.CLS:
            return hidden[:, 0]
        if mask is None:
            return hidden.mean(dim=1)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def _forward(self, batch: Any) -> torch.Tensor:
        if self.vision:
            x = self._images(torch.as_tensor(np.asarray(batch, dtype=np.float32)))
            out = self.model(pixel_values=x.to(self.device))
            return self._pool(out.last_hidden_state, None)
        if len(batch) and isinstance(batch[0], str):
            ids, mask = self._tokenize(batch)
        else:
            ids = torch.as_tensor(np.asarray(batch)).long()
            if ids.ndim != 2:
                raise ValueError(f"token inputs must be (n, L), got shape {tuple(ids.shape)}")
            mask = (ids != self.pad_id).long()
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        return self._pool(out.last_hidden_state, mask.to(self.device))

    def extract(self, inputs: Any, progress: Progress | None = None) -> np.ndarray:
        """Pooled last hidden states of images, texts or token ids (n x hidden_size)."""
        n = len(inputs)
        out = np.empty((n, self.dim), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, n, self.batch_size):
                batch = inputs[start : start + self.batch_size]
                out[start : start + len(batch)] = self._forward(batch).float().cpu().numpy()
                if progress is not None:
                    progress(start + len(batch), n)
        return out


class PooledBase(nn.Module):
    """A zoo ``transformers`` classifier minus its head: its base model's pooler output,
    else the CLS state (images) or the mean of non-padding states (token ids, pad 0)."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__()
        self.base = wrapped.net.base_model
        self.input_key, self.tokens = wrapped.input_key, wrapped.tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of a batch."""
        if not self.tokens:
            out = self.base(**{self.input_key: x})
            pooled = getattr(out, "pooler_output", None)
            if pooled is not None:
                return pooled.flatten(1)  # type: ignore[no-any-return]
            return out.last_hidden_state[:, 0]  # type: ignore[no-any-return]
        ids = x.long()
        mask = (ids != 0).long()
        out = self.base(input_ids=ids, attention_mask=mask)
        m = mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
        return (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1.0)  # type: ignore[no-any-return]


def task_module(task: Any) -> tuple[nn.Module, tuple[int, ...] | None]:
    """The frozen module a task offers: its ``feature_extractor()`` if it has one, else
    its model minus the head (the last Linear of an ``nn.Sequential``, or the pooled
    base model of a zoo ``transformers`` classifier)."""
    shape: tuple[int, ...] | None = None
    data = task.train_data()
    x = getattr(data, "x", None)
    if isinstance(x, np.ndarray) and x.ndim >= 2:
        shape = tuple(int(d) for d in x.shape[1:])
    own = getattr(task, "feature_extractor", None)
    if callable(own):
        module = own()
        if not isinstance(module, nn.Module):
            raise ConfigError(f"task {task.name!r}: feature_extractor() did not return a module")
        return module, shape
    model = task.build_model()
    if isinstance(model, nn.Sequential) and len(model) > 1 and isinstance(model[-1], nn.Linear):
        return model[:-1], shape
    from fedhe_client.zoo.hf import LogitsOf

    if isinstance(model, LogitsOf):
        return PooledBase(model), shape
    raise ConfigError(
        f"task {task.name!r}: its model is not an nn.Sequential ending in a Linear head; "
        "give the task a feature_extractor() method returning the frozen module"
    )


def load_extractor(
    kind: ExtractorKind | str,
    name: str = "",
    pooling: Pooling | str | None = None,
    local_path: str | Path | None = None,
    task: Any = None,
    device: str | torch.device = "cpu",
) -> FeatureExtractor:
    """The extractor a transfer job names (``kind``/``name``/``pooling``); ``local_path``
    (hf) and ``task`` come from this client's own config, never from the job."""
    try:
        kind = ExtractorKind(kind)
    except ValueError:
        choices = ", ".join(k.value for k in ExtractorKind)
        raise ConfigError(f"unknown extractor kind {kind!r}; choose one of {choices}") from None
    if kind is ExtractorKind.HF:
        if local_path is None:
            raise ConfigError(
                f"the job's extractor is the transformers model {name!r}; give its local "
                "folder in this client's config (models are never downloaded)"
            )
        return HFExtractor(local_path, pooling, device=device)
    if kind is ExtractorKind.BUILTIN:
        if name not in ("", "digits-cnn"):
            raise ConfigError(f"unknown built-in extractor {name!r}; the only one is 'digits-cnn'")
        from fedhe_client.transfer.pretrained import IMAGE_SHAPE, load_digits_cnn

        return TorchModuleExtractor(load_digits_cnn().features, IMAGE_SHAPE, device=device)
    if kind is ExtractorKind.TASK:
        if task is None:
            raise ConfigError("extractor kind 'task' needs a task configured on this client")
        if name and name != task.name:
            raise ConfigError(
                f"the job's extractor is task {name!r}; this client runs {task.name!r}"
            )
        module, shape = task_module(task)
        return TorchModuleExtractor(module, shape, device=device)
    if not name.isdigit():
        raise ConfigError("extractor kind 'identity' needs the feature count as its name")
    return IdentityExtractor(int(name))
