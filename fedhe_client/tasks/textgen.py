"""An offline text task: generated topic sentences, a word tokenizer built from them.

Each sentence comes from a template filled with shared filler words and one or two
keywords of its topic; the topic (the label) is decided by the keywords alone. The
vocabulary is every word the generator can emit (sorted, so every site builds the same
tokenizer) plus ``[PAD]`` (0), ``[CLS]`` (1) and ``[UNK]`` (2). Nothing downloads.

Job: ``task: {name: textgen, params: {...}}``; client config:
``task: fedhe_client.tasks.textgen:TextGenTask``. Params: ``model`` (``bert-tiny``,
default, or a zoo text model ``bert-base``/``gpt-mini``), ``model_dir`` (a local
``transformers`` sequence-classification folder instead, e.g. a user's own BERT),
``hidden``/``layers`` (bert-tiny), ``samples`` per site, ``val_samples``, ``seq_len``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from fedhe_client.tasks.base import ArrayData, ArrayTask, TaskSetup
from fedhe_common.errors import ConfigError

TEXTGEN_TASK = "textgen"
SPECIALS = ("[PAD]", "[CLS]", "[UNK]")
TOPICS: dict[str, tuple[str, ...]] = {
    "sports": ("match", "goal", "team", "coach", "league", "striker"),
    "weather": ("rain", "storm", "sunny", "forecast", "wind", "snow"),
    "food": ("pasta", "recipe", "bread", "soup", "cheese", "oven"),
    "tech": ("laptop", "software", "chip", "server", "robot", "code"),
}
FILLERS = (
    "the", "a", "today", "we", "they", "said", "about", "new", "big", "small", "really",
    "some", "people", "talked", "again", "and", "this", "that", "was", "is", "very", "news",
    "morning", "evening", "city", "friend", "report", "week", "old", "good",
)  # fmt: skip
TEMPLATES = (
    "{f} {k} {f} {k} {f}",
    "{k} {f} {f} {k}",
    "{f} {f} {k} {k} {f} {f}",
    "{k} {f} {k} {f} {k}",
    "{f} {k} {f} {f} {k} {f}",
)


def vocabulary() -> dict[str, int]:
    """The tokenizer's word -> id map (specials first, then every generator word sorted)."""
    words = sorted({*FILLERS, *(k for ks in TOPICS.values() for k in ks)})
    return {w: i for i, w in enumerate((*SPECIALS, *words))}


def sentences(count: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``count`` generated sentences and their topic labels (0..len(TOPICS)-1)."""
    rng = np.random.default_rng(seed)
    topics = list(TOPICS.values())
    texts: list[str] = []
    labels = rng.integers(0, len(topics), size=count)
    for label in labels:
        words = []
        for part in str(TEMPLATES[rng.integers(len(TEMPLATES))]).split():
            pool = topics[int(label)] if part == "{k}" else FILLERS
            words.append(str(pool[rng.integers(len(pool))]))
        texts.append(" ".join(words))
    return texts, labels.astype(np.int64)


def encode(texts: Sequence[str], vocab: dict[str, int], seq_len: int) -> np.ndarray:
    """Token ids (N, seq_len): ``[CLS]`` then words (unknown -> ``[UNK]``), 0-padded."""
    out = np.zeros((len(texts), seq_len), dtype=np.int64)
    unk = vocab["[UNK]"]
    for i, text in enumerate(texts):
        ids = [vocab["[CLS]"], *(vocab.get(w, unk) for w in text.lower().split())]
        ids = ids[:seq_len]
        out[i, : len(ids)] = ids
    return out


def save_vocab(path: str | Path) -> Path:
    """Write the vocabulary as a BERT ``vocab.txt`` (one token per line, id = line)."""
    path = Path(path)
    path.write_text("".join(f"{w}\n" for w in vocabulary()))
    return path


def _site_seed(seed: int, client_id: str) -> int:
    return seed * 1_000_003 + zlib.crc32(client_id.encode())


def _int(params: Mapping[str, object], key: str, default: int, low: int, high: int) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"task textgen: param {key} must be an integer in [{low}, {high}]")
    return value


class TextGenTask(ArrayTask):
    """Topic classification of generated sentences (every site its own sentences)."""

    name = TEXTGEN_TASK

    def __init__(self, setup: TaskSetup) -> None:
        params = dict(setup.params)
        self.seq_len = _int(params, "seq_len", 16, 4, 512)
        self.hidden = _int(params, "hidden", 32, 8, 1024)
        self.layers = _int(params, "layers", 2, 1, 24)
        init_range = params.get("init_range", 0.02)  # bert-tiny's weight init std
        if isinstance(init_range, bool) or not isinstance(init_range, int | float):
            raise ConfigError("task textgen: param init_range must be a number")
        self.init_range = float(init_range)
        samples = _int(params, "samples", 256, 8, 1_000_000)
        val_samples = _int(params, "val_samples", 256, 8, 1_000_000)
        self.model_name = str(params.get("model", "bert-tiny"))
        self.model_dir = params.get("model_dir")
        self.vocab = vocabulary()
        self.classes = len(TOPICS)
        texts, y = sentences(samples, _site_seed(setup.seed, setup.client_id))
        train = ArrayData(encode(texts, self.vocab, self.seq_len), y)
        texts, y = sentences(val_samples, setup.seed * 7 + 1)  # one validation set for all
        super().__init__(train, ArrayData(encode(texts, self.vocab, self.seq_len), y))

    def build_model(self) -> nn.Module:
        """bert-tiny from a BertConfig, a zoo text model, or a local transformers folder."""
        from fedhe_client.zoo import build_model, zoo_model
        from fedhe_client.zoo.hf import LogitsOf

        if self.model_dir is not None:
            return LogitsOf(_from_folder(str(self.model_dir), self.classes), "input_ids", True)
        if self.model_name == "bert-tiny":
            return LogitsOf(self._bert_tiny(), "input_ids", tokens=True)
        try:
            if zoo_model(self.model_name).inputs != "tokens":
                raise ValueError(f"{self.model_name} is not a text model")
            return build_model(self.model_name, (self.seq_len,), self.classes)
        except ValueError as exc:
            raise ConfigError(f"task textgen: model: {exc}") from None

    def _bert_tiny(self) -> nn.Module:
        from transformers import BertConfig, BertForSequenceClassification

        from fedhe_client.zoo.hf import _config

        config = _config(
            BertConfig,
            vocab_size=len(self.vocab),
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=max(1, self.hidden // 16),
            intermediate_size=2 * self.hidden,
            max_position_embeddings=max(64, self.seq_len),
            num_labels=self.classes,
            pad_token_id=0,
            initializer_range=self.init_range,
        )
        return BertForSequenceClassification(config)


def _from_folder(folder: str, classes: int) -> nn.Module:
    """A user's own sequence classifier from a local folder (never downloads)."""
    from transformers import AutoModelForSequenceClassification

    if not Path(folder, "config.json").is_file():
        raise ConfigError(f"task textgen: model_dir {folder} has no config.json")
    try:
        model: nn.Module = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=classes, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"task textgen: cannot load {folder}: {exc}") from None
    return model
