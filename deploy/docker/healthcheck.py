"""Container health probe: ``grpc.health.v1.Health/Check`` on this service, over its own TLS.

Usage: ``python healthcheck.py --config /etc/fedhe/server.yaml [--service NAME]``.
Reads the service's config (listen port, tls cert/key/ca), calls the service on
127.0.0.1 with the service's own certificate as the client certificate (mutual TLS) and
the certificate's first host name as the TLS target name. Exit 0: SERVING; 1: anything else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
import yaml
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _target_name(cert_pem: bytes) -> str:
    """The first DNS name of the certificate (else its CN): what the client checks."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
        if names:
            return str(names[0])
    except x509.ExtensionNotFound:
        pass
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(cn[0].value) if cn else "localhost"


def channel_for(config: dict[str, object], address: str | None) -> grpc.Channel:
    """A channel to the service described by ``config`` (its own listen port on loopback)."""
    listen = str(config.get("listen", "127.0.0.1:0"))
    target = address or f"127.0.0.1:{listen.rsplit(':', 1)[1]}"
    if config.get("insecure"):
        return grpc.insecure_channel(target)
    tls = config.get("tls")
    if not isinstance(tls, dict):
        raise ValueError("config has no tls section")
    cert = Path(tls["cert_file"]).read_bytes()
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(tls["ca_file"]).read_bytes() if tls.get("ca_file") else None,
        private_key=Path(tls["key_file"]).read_bytes(),
        certificate_chain=cert,
    )
    options = [("grpc.ssl_target_name_override", _target_name(cert))]
    return grpc.secure_channel(target, creds, options=options)


def check(config_path: Path, service: str, address: str | None, timeout: float) -> bool:
    """True when the service answers SERVING."""
    config = yaml.safe_load(config_path.read_text())
    with channel_for(config, address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="the service's config")
    parser.add_argument("--service", default="", help="health service name ('' = overall)")
    parser.add_argument("--address", help="host:port instead of 127.0.0.1:<listen port>")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    try:
        ok = check(args.config, args.service, args.address, args.timeout)
    except (OSError, ValueError, KeyError, grpc.RpcError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print("SERVING" if ok else "NOT_SERVING")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
