"""ResNet-18 (transformers config, random weights) on 32x32 image folders, one per site.

Three clients, two encrypted rounds through keyauth, server and clients on loopback; the
HE global model equals plaintext FedAvg of the clients' uploads within 1e-6.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fedhe_cli.cluster import ClientSpec, LocalCluster
from fedhe_common.config.models import SiteDataSection
from tests.e2e.helpers import exported_global, plain_fedavg

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

JOB = """
version: 1
job: {name: resnet, rounds: 2, seed: 5}
participants: {min_clients: 3, round_timeout_s: 240, wait_after_min_s: 1}
model: {name: resnet18}
training: {local_epochs: 1, batch_size: 8, lr: 0.01, momentum: 0.9, clip_grad_norm: 5.0}
"""
CLASSES = ("dots", "rings")


def site_images(root: Path, seed: int, per_class: int = 8, size: int = 32) -> Path:
    """Small RGB PNGs per class: bright dots vs rings on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        shape = r < size / 6 if label == 0 else np.abs(r - size / 3) < 2
        for i in range(per_class):
            img = rng.normal(60, 25, (size, size, 3)) + shape[..., None] * rng.uniform(120, 180, 3)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(
                root / name / f"{i}.png"
            )
    return root


class SiteCluster(LocalCluster):
    """Each client's own config points at its own image folder (built-in task)."""

    def client_config(self, client_id: str) -> Path:
        path = super().client_config(client_id)
        doc = yaml.safe_load(path.read_text())
        section = SiteDataSection(
            format="images",
            path=str(self.workdir / "sites" / client_id),
            image_size=[32, 32],
            channels=3,
            classes=list(CLASSES),
            val_fraction=0.25,
        )
        doc["data"] = section.model_dump()
        return self._write(client_id, doc)


def test_resnet18_two_encrypted_rounds_equal_plaintext_fedavg(tmp_path: Path) -> None:
    names = ["c0", "c1", "c2"]
    for i, name in enumerate(names):
        site_images(tmp_path / "sites" / name, seed=i, per_class=6 + 2 * i)  # unequal weights
    specs = [ClientSpec(name, i, 3) for i, name in enumerate(names)]
    start = time.monotonic()
    with SiteCluster(tmp_path, specs, export=True) as cluster:
        cluster.start_keyauth()
        cluster.start_server(JOB)
        cluster.start_clients()
        for name in names:
            assert cluster.wait(name, 240) == 0, cluster.log_tail(name)
        for number in (1, 2):
            expected = plain_fedavg(cluster, names, number)
            assert expected.size > 11_000_000  # ResNet-18's parameters and BN statistics
            for name in names:
                got = exported_global(cluster, name, number)
                assert np.abs(got - expected).max() <= 1e-6
    print(f"resnet18 e2e: {time.monotonic() - start:.1f} s")
