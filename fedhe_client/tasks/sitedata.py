"""Loaders for a site's own data: image folders, .npz, CSV, Parquet, ``datasets`` dirs, tokens.

Everything is read from local paths named in the client's own config; nothing downloads.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fedhe_client.tasks.base import ArrayData
from fedhe_common.config.models import SiteDataSection
from fedhe_common.errors import ConfigError

MAX_TOKEN_ID = 1 << 24  # token ids are kept exactly as float32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_site_data(section: SiteDataSection) -> tuple[ArrayData, ArrayData, list[str]]:
    """(train, validation, class names) of this site; class names are [] for tables/arrays."""
    full, names = _load(section.format, Path(section.path), section, section.classes)
    if section.val_path is not None:
        val, _ = _load(section.format, Path(section.val_path), section, names or None)
        return full, val, names
    order = np.random.default_rng(section.split_seed).permutation(len(full))
    n_val = max(1, round(len(full) * section.val_fraction))
    if n_val >= len(full):
        raise ConfigError(f"{section.path}: {len(full)} samples are too few to split")
    val_idx, train_idx = order[:n_val], order[n_val:]
    train = ArrayData(full.x[train_idx], full.y[train_idx])
    return train, ArrayData(full.x[val_idx], full.y[val_idx]), names


def _load(
    fmt: str, path: Path, section: SiteDataSection, classes: list[str] | None
) -> tuple[ArrayData, list[str]]:
    if not path.exists():
        raise ConfigError(f"{path}: data path does not exist")
    if fmt == "images":
        return load_image_folder(path, section.image_size, section.channels, classes)
    if fmt == "npz":
        return load_npz(path), []
    if fmt == "csv":
        return load_csv(path, section.label_column, section.feature_columns), []
    if fmt == "parquet":
        return load_parquet(path, section.label_column, section.feature_columns), []
    if fmt == "tokens":
        return load_tokens(path, section.seq_len, section.pad_id), []
    return load_hf_dataset(path, section.label_column, section.feature_columns), []


def load_image_folder(
    root: Path, size: list[int], channels: int, classes: list[str] | None = None
) -> tuple[ArrayData, list[str]]:
    """Images in ``root/<class>/*``, resized to ``size`` (H, W), float32 NCHW in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    names = list(classes) if classes else folders
    if not names:
        raise ConfigError(f"{root}: no class sub-folders")
    unknown = sorted(set(folders) - set(names))
    if unknown:
        raise ConfigError(f"{root}: folders {unknown} are not among the configured classes")
    xs, ys = [], []
    mode = "L" if channels == 1 else "RGB"
    h, w = size
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            continue  # this site has no examples of that class
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as img:
                    arr = np.asarray(img.convert(mode).resize((w, h)), dtype=np.float32)
            except (OSError, UnidentifiedImageError) as exc:
                raise ConfigError(f"{file}: not a readable image: {exc}") from None
            xs.append(arr.reshape(h, w, channels).transpose(2, 0, 1) / 255.0)
            ys.append(label)
    if not xs:
        raise ConfigError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return ArrayData(np.stack(xs).astype(np.float32), np.array(ys, dtype=np.int64)), names


def load_npz(path: Path) -> ArrayData:
    """Arrays ``x`` (N, ...) and ``y`` (N,) from an .npz (never unpickled)."""
    try:
        with np.load(str(path), allow_pickle=False) as npz:
            x, y = npz["x"].astype(np.float32), npz["y"].astype(np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"{path}: need arrays 'x' and 'y' (no pickled objects): {exc}") from None
    if x.ndim == 3:  # N, H, W images
        x = x[:, None]
    return _checked(path, x, y)


def load_csv(path: Path, label: str, features: list[str] | None) -> ArrayData:
    """A CSV with a header row: the label column and numeric feature columns."""
    try:
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: cannot read CSV: {exc}") from None
    if len(rows) < 2:
        raise ConfigError(f"{path}: need a header row and at least one data row")
    header, body = rows[0], [r for r in rows[1:] if r]
    columns = {name: [r[i] if i < len(r) else "" for r in body] for i, name in enumerate(header)}
    return _from_columns(path, columns, label, features)


def load_parquet(path: Path, label: str, features: list[str] | None) -> ArrayData:
    """A Parquet table (needs pyarrow, which FedHE does not install)."""
    if importlib.util.find_spec("pyarrow") is None:
        raise ConfigError(f"{path}: format parquet needs the pyarrow package (not installed)")
    import pyarrow.parquet as pq

    table = pq.read_table(str(path))
    return _from_columns(path, table.to_pydict(), label, features)


def load_hf_dataset(path: Path, label: str, features: list[str] | None) -> ArrayData:
    """A Hugging Face ``datasets`` folder saved with ``save_to_disk`` (needs ``datasets``)."""
    if importlib.util.find_spec("datasets") is None:
        raise ConfigError(f"{path}: format hf needs the datasets package (not installed)")
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        raise ConfigError(f"{path}: a DatasetDict; point data.path at one split's folder")
    return _from_columns(path, ds.to_dict(), label, features)


def load_tokens(path: Path, seq_len: int, pad_id: int = 0) -> ArrayData:
    """A tokenised text file: one example a line, ``label<TAB>token ids`` (space-separated).

    Each example is truncated or padded with ``pad_id`` to ``seq_len``; x is (N, seq_len)
    token ids (as float32, exact below 2**24), y the integer labels. Blank lines are skipped.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the token file: {exc}") from None
    xs: list[list[int]] = []
    ys: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        label, sep, ids = line.partition("\t")
        try:
            if not sep:
                raise ValueError("no tab between label and token ids")
            y, tokens = int(label), [int(t) for t in ids.split()]
        except ValueError as exc:
            raise ConfigError(
                f"{path} line {number}: need 'label<TAB>space-separated token ids': {exc}"
            ) from None
        if not tokens or y < 0 or min(tokens) < 0 or max(tokens) >= MAX_TOKEN_ID:
            raise ConfigError(
                f"{path} line {number}: need a label >= 0 and 1+ token ids in [0, {MAX_TOKEN_ID})"
            )
        xs.append((tokens + [pad_id] * seq_len)[:seq_len])
        ys.append(y)
    if not ys:
        raise ConfigError(f"{path}: no examples")
    return _checked(path, np.array(xs, dtype=np.float32), np.array(ys, dtype=np.int64))


def _from_columns(
    path: Path, columns: Mapping[str, Sequence[object]], label: str, features: list[str] | None
) -> ArrayData:
    if label not in columns:
        raise ConfigError(f"{path}: no label column {label!r} (columns: {sorted(columns)})")
    names = features or [c for c in columns if c != label]
    missing = [c for c in names if c not in columns]
    if missing or not names:
        raise ConfigError(f"{path}: feature columns missing: {missing or 'none left'}")
    try:
        x = np.array([columns[c] for c in names], dtype=np.float32).T
        y_raw = np.array(columns[label], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: a feature or label value is not numeric: {exc}") from None
    if not np.isfinite(x).all() or not np.isfinite(y_raw).all():
        raise ConfigError(f"{path}: empty, NaN or infinite values")
    if (y_raw != np.round(y_raw)).any():
        raise ConfigError(f"{path}: labels must be integers")
    return _checked(path, x, y_raw.astype(np.int64))


def _checked(path: Path, x: np.ndarray, y: np.ndarray) -> ArrayData:
    if y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise ConfigError(f"{path}: x and y must be non-empty with one label per sample")
    if (y < 0).any():
        raise ConfigError(f"{path}: labels must be >= 0")
    return ArrayData(x, y)
