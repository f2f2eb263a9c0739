"""Zoo models from ``transformers`` configurations with random weights (nothing downloads).

Each is wrapped so that ``model(x)`` returns logits, like the small models: image models
take float (N, C, H, W); text models take token ids (N, L), as int or float tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

Shape = tuple[int, ...]


class LogitsOf(nn.Module):
    """``net(**{input_key: x}).logits``; the wrapped model is ``net`` (save_pretrained-able)."""

    def __init__(self, net: nn.Module, input_key: str, tokens: bool = False) -> None:
        super().__init__()
        self.net = net
        self.input_key = input_key
        self.tokens = tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the wrapped ``transformers`` model."""
        if self.tokens:
            x = x.long()
        out: Any = self.net(**{self.input_key: x})
        return out.logits  # type: ignore[no-any-return]


def _config(cls: Any, **fields: Any) -> Any:
    """A ``transformers`` configuration (their generic fields, e.g. num_labels, are kwargs)."""
    return cls(**fields)


def _image(in_shape: Shape) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ValueError(f"this model needs images (C, H, W), got input shape {in_shape}")
    return int(in_shape[0]), int(in_shape[1]), int(in_shape[2])


def _tokens(in_shape: Shape) -> int:
    if len(in_shape) != 1:
        raise ValueError(f"this model needs token ids (L,), got input shape {in_shape}")
    return int(in_shape[0])


def _resnet(depths: list[int], layer_type: str, widths: list[int]) -> Any:
    def build(in_shape: Shape, classes: int, hidden: int) -> nn.Module:
        from transformers import ResNetConfig, ResNetForImageClassification

        c, _, _ = _image(in_shape)
        config = _config(
            ResNetConfig,
            num_channels=c,
            depths=depths,
            layer_type=layer_type,
            hidden_sizes=widths,
            num_labels=classes,
        )
        return LogitsOf(ResNetForImageClassification(config), "pixel_values")

    build.__doc__ = f"ResNet ({layer_type} blocks {depths}) from transformers' ResNetConfig."
    return build


resnet18 = _resnet([2, 2, 2, 2], "basic", [64, 128, 256, 512])
resnet34 = _resnet([3, 4, 6, 3], "basic", [64, 128, 256, 512])
resnet50 = _resnet([3, 4, 6, 3], "bottleneck", [256, 512, 1024, 2048])


def mobilenetv2(in_shape: Shape, classes: int, hidden: int) -> nn.Module:
    """MobileNetV2 (width 1.0) from transformers' MobileNetV2Config."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    c, h, _ = _image(in_shape)
    config = _config(MobileNetV2Config, num_channels=c, image_size=h, num_labels=classes)
    return LogitsOf(MobileNetV2ForImageClassification(config), "pixel_values")


def vit_base(in_shape: Shape, classes: int, hidden: int) -> nn.Module:
    """ViT-B/16 (patch 16; images of a multiple of 16 pixels) from transformers' ViTConfig."""
    from transformers import ViTConfig, ViTForImageClassification

    c, h, w = _image(in_shape)
    if h != w or h % 16:
        raise ValueError(f"vit-base needs square images of a multiple of 16 pixels, got {h}x{w}")
    config = _config(
        ViTConfig, num_channels=c, image_size=h, patch_size=16, num_labels=classes
    )
    return LogitsOf(ViTForImageClassification(config), "pixel_values")


def bert_base(in_shape: Shape, classes: int, hidden: int) -> nn.Module:
    """BERT-base sequence classifier (token ids of at most 512) from BertConfig."""
    from transformers import BertConfig, BertForSequenceClassification

    length = _tokens(in_shape)
    if length > 512:
        raise ValueError(f"bert-base takes at most 512 tokens, got {length}")
    config = _config(BertConfig, num_labels=classes)
    return LogitsOf(BertForSequenceClassification(config), "input_ids", tokens=True)


GPT_MINI = {"n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 8192}


def gpt_mini(in_shape: Shape, classes: int, hidden: int) -> nn.Module:
    """A small decoder-only LM (GPT-2 architecture: 4 layers, 256 wide, 8,192-token vocab)
    with a sequence-classification head (last token; token id 0 is padding)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    length = _tokens(in_shape)
    config = _config(
        GPT2Config,
        **GPT_MINI, n_positions=max(128, length), num_labels=classes, pad_token_id=0,
        bos_token_id=1, eos_token_id=1,
    )
    return LogitsOf(GPT2ForSequenceClassification(config), "input_ids", tokens=True)
