"""A small PKI: one CA and leaf certificates (``fedhe certs init``, ``fedhe provision``)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedhe_common.config.models import PeerSection
from fedhe_common.errors import ConfigError
from fedhe_common.rpc.auth import read_secret_file, write_secret_file

VALIDITY = dt.timedelta(days=365)
PROBE_TIMEOUT_S = 5.0


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


def _host_port(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        return None
    return host.strip("[]"), int(port)


def _reply_after_handshake(
    ctx: ssl.SSLContext, target: tuple[str, int], timeout_s: float
) -> str | None:
    """None when the server sends a first byte after the handshake, else how it refused."""
    with (
        socket.create_connection(target, timeout=timeout_s) as raw,
        ctx.wrap_socket(raw, server_hostname=target[0]) as tls,
    ):
        try:
            return None if tls.recv(1) else "closed without a reply"
        except ssl.SSLError as exc:  # a TLS alert after the handshake
            return str(exc.reason or exc)


def tls_problem(peer: PeerSection, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """A certificate problem between this side and ``peer`` in one line, or None.

    gRPC reports both directions poorly: a server certificate that ``ca_file`` cannot verify
    comes with native log noise, and with TLS 1.3 a client certificate the server refuses
    (another CA, expired) is only "Socket closed", like a peer that went away. One TLS
    probe tells them apart: a gRPC server that accepted this side sends its HTTP/2 SETTINGS
    at once; one that refused it closes the connection without a byte. Nothing is sent.
    None also when the peer is down or the probe cannot tell (gRPC then reports).
    """
    target = _host_port(peer.address)
    if peer.insecure or target is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols(["h2"])
    try:
        if peer.ca_file:
            ctx.load_verify_locations(peer.ca_file)
        else:  # gRPC's default roots may differ from Python's: leave that check to gRPC
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        if peer.cert_file and peer.key_file:
            ctx.load_cert_chain(peer.cert_file, peer.key_file)
        refusal = _reply_after_handshake(ctx, target, timeout_s)
    except ssl.SSLCertVerificationError as exc:
        return (
            f"{peer.address}: the server's certificate does not verify with ca_file "
            f"{peer.ca_file} ({exc.verify_message}): is it the project's CA certificate, "
            "and the address one of the server's hosts?"
        )
    except OSError:  # down, refused, unreadable files, other handshake failures, a timeout
        return None
    if refusal is None:
        return None
    if not peer.cert_file:
        return f"{peer.address} wants a client certificate (cert_file, key_file): {refusal}"
    return (
        f"{peer.address} refused this side's certificate {peer.cert_file} right after the "
        f"TLS handshake ({refusal}): is it signed by the project CA, and still valid?"
    )
