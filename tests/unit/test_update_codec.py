"""Mixed updates: masked part encrypted, the rest clipped float32 with optional DP noise."""

from __future__ import annotations

import numpy as np

from fedhe_client.keymodes import SingleKey
from fedhe_client.update_codec import add_dp_noise, encode_update
from fedhe_common.config.models import DPSection
from fedhe_common.mlbridge.masks import EncryptionMask
from tests.conftest import holder_for


def test_split_streams_and_noise_only_on_plaintext() -> None:
    holder = holder_for("single-key")
    total = 10_000
    mask = EncryptionMask(total, np.arange(0, total, 10))
    vector = np.linspace(-20, 20, total)
    update = encode_update(
        vector,
        SingleKey(holder),
        mask,
        holder.preset.values_per_ciphertext,
        16.0,
        DPSection(mechanism="gaussian", scale=0.5),
    )
    assert update.ct_plan.total == mask.count and update.pt_plan.total == total - mask.count
    rest = np.concatenate([np.frombuffer(p, dtype="<f4") for p in update.plaintext])
    clipped = np.clip(np.delete(vector, mask.indices), -16, 16)
    noise = rest - clipped
    assert 0.4 < noise.std() < 0.6  # gaussian scale 0.5 on the plaintext part
    masked = np.concatenate([holder.decrypt(b, aggregate=False) for b in update.ciphertext])
    assert np.abs(masked[: mask.count] - np.clip(vector[mask.indices], -16, 16)).max() < 1e-6


def test_laplace_and_none() -> None:
    x = np.zeros(20_000)
    assert np.array_equal(add_dp_noise(x, DPSection()), x)
    noisy = add_dp_noise(x, DPSection(mechanism="laplace", scale=1.0))
    assert abs(np.abs(noisy).mean() - 1.0) < 0.05  # E|Laplace(b)| = b
