"""Three key roles: the server-side type has no decrypt and no path to secret keys."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.crypto.context import PublicParams
from fedhe_common.crypto.public import PublicKeyEncryptor
from fedhe_common.crypto.secret import SecretKeyHolder
from fedhe_common.errors import ContextMismatchError, InvalidCiphertextError, KeyMaterialError
from tests.conftest import holder_for


def test_aggregator_has_no_decrypt_and_rejects_key_material() -> None:
    holder = holder_for("single-key")
    agg = CiphertextAggregator(holder.params)
    assert not any("decrypt" in name or "secret" in name for name in dir(agg))
    with pytest.raises(TypeError):
        CiphertextAggregator(holder.export_secret_key())  # type: ignore[arg-type]
    with pytest.raises(InvalidCiphertextError, match="SECRET_KEY"):
        agg.load_upload(holder.export_secret_key())


def test_server_import_path_never_loads_secret_key_code() -> None:
    """Every module of the server package, imported together, loads no secret-key code,
    no threshold-party code, no client code and no torch."""
    code = (
        "import importlib, pkgutil, sys, fedhe_server;"
        "[importlib.import_module(m.name) for m in "
        "pkgutil.walk_packages(fedhe_server.__path__, 'fedhe_server.')];"
        "bad=[m for m in sys.modules if m.endswith(('crypto.secret', 'crypto.threshold', "
        "'crypto.smudging')) or m.startswith(('fedhe_client', 'torch'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_key_encryptor_round_trip() -> None:
    holder = holder_for("threshold-practical")
    enc = PublicKeyEncryptor(holder.params, holder.export_public_key())
    x = np.linspace(-1, 1, 50)
    assert np.abs(holder.decrypt(enc.encrypt(x), aggregate=False)[:50] - x).max() < 1e-6
    assert not hasattr(enc, "decrypt")


def test_public_key_must_match_its_hash() -> None:
    a, b = holder_for("single-key"), SecretKeyHolder.generate(holder_for("single-key").preset)
    with pytest.raises(KeyMaterialError):
        PublicKeyEncryptor(a.params, b.export_public_key())


def test_secret_key_of_another_key_set_is_refused() -> None:
    a = holder_for("single-key")
    b = SecretKeyHolder.generate(a.preset)
    forged = b.export_secret_key()[:8] + a.fingerprint + b.export_secret_key()[40:]
    with pytest.raises(KeyMaterialError, match="does not match"):
        SecretKeyHolder.from_blobs(a.params, forged, a.export_public_key())


def test_ciphertext_of_another_key_set_has_another_fingerprint() -> None:
    a = holder_for("single-key")
    b = SecretKeyHolder.generate(a.preset)
    with pytest.raises(ContextMismatchError):
        CiphertextAggregator(a.params).load_upload(b.encrypt(np.ones(4)))


def test_public_params_json_rejects_tampered_preset() -> None:
    params = holder_for("single-key").params
    text = params.to_json().replace('"scale_bits":32', '"scale_bits":30')
    with pytest.raises(KeyMaterialError, match="differ"):
        PublicParams.from_json(text)
