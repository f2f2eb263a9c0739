"""Shared fixtures: key holders per preset are expensive-ish, so build them once."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.crypto.presets import PRESETS, get_preset
from fedhe_common.crypto.secret import SecretKeyHolder

_HOLDERS: dict[str, SecretKeyHolder] = {}


def holder_for(preset_name: str) -> SecretKeyHolder:
    """A cached key holder for ``preset_name``."""
    if preset_name not in _HOLDERS:
        _HOLDERS[preset_name] = SecretKeyHolder.generate(get_preset(preset_name))
    return _HOLDERS[preset_name]


@pytest.fixture(params=sorted(PRESETS))
def preset_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def single_key() -> tuple[SecretKeyHolder, CiphertextAggregator]:
    holder = holder_for("single-key")
    return holder, CiphertextAggregator(holder.params)


MetricSamples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_metrics(port: int) -> MetricSamples:
    """GET /metrics on loopback: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
