"""A small PKI: one CA and leaf certificates (``fedhe certs init``, ``fedhe provision``)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedhe_common.errors import ConfigError
from fedhe_common.rpc.auth import read_secret_file, write_secret_file

VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def new_ca(
    common_name: str = "FedHE dev CA", validity: dt.timedelta = VALIDITY
) -> CertificateAuthority:
    """A fresh self-signed CA (P-256)."""
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key)


def write_ca(ca: CertificateAuthority, out: Path) -> tuple[Path, Path]:
    """Write ``ca.crt`` and ``ca.key`` (0600) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    crt, key = out / "ca.crt", out / "ca.key"
    crt.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    write_secret_file(key, _pem_key(ca.key))
    return crt, key


def load_ca(directory: Path) -> CertificateAuthority:
    """Read ``ca.crt`` / ``ca.key`` written by :func:`write_ca` (key must be 0600)."""
    key_pem = read_secret_file(directory / "ca.key")
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{directory}: cannot load the CA: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{directory}/ca.key: expected an EC private key")
    return CertificateAuthority(cert, key)


def issue(
    ca: CertificateAuthority,
    common_name: str,
    hosts: list[str],
    crt: Path,
    key_path: Path,
    validity: dt.timedelta = VALIDITY,
) -> None:
    """Write a leaf certificate (CN = ``common_name``, SAN = ``hosts``) and its 0600 key.

    The certificate is good for both TLS server and client authentication.
    """
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    crt.parent.mkdir(parents=True, exist_ok=True)
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_secret_file(key_path, _pem_key(key))


def init_pki(out: Path, services: list[str], hosts: list[str]) -> list[Path]:
    """Write ``ca.crt``/``ca.key`` and ``<service>.crt``/``.key`` (keys mode 0600)."""
    ca = new_ca()
    written = list(write_ca(ca, out))
    for service in services:
        crt, key_path = out / f"{service}.crt", out / f"{service}.key"
        issue(ca, service, hosts, crt, key_path)
        written += [crt, key_path]
    return written
