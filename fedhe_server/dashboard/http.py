"""The dashboard's HTTP(S) server: a stdlib server in a thread, GET only, admins only.

Callers are named as on gRPC (:class:`~fedhe_common.rpc.auth.TokenAuthority`): a bearer
token (``Authorization: Bearer`` or HTTP Basic with the token as password; sha256
compared in constant time) or, under TLS with the server's ``tls.ca_file``, a verified
client certificate whose CN is a configured identity. No credentials: 401; an identity
other than an admin: 403; a method other than GET/HEAD: 405. HTTPS reuses the server's
certificate and key; without TLS the listen address must be loopback (config check).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import ssl
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fedhe_common.config.models import ServerConfig, host_of
from fedhe_common.errors import AuthenticationError, ConfigError, FedHEError
from fedhe_common.rpc.auth import CN_KEY, METADATA_KEY, Identity, TokenAuthority
from fedhe_server.dashboard.view import JOB_ID, dashboard_state
from fedhe_server.service import AggregationServer

logger = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
PAGES = {  # path -> (file, content type); nothing else is served
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
API = "/api/state"
MAX_CONNECTIONS = 16  # handler threads at once; more connections are closed at once
REQUEST_TIMEOUT_S = 10.0
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
REALM = 'Basic realm="FedHE dashboard", charset="UTF-8"'


@dataclass(frozen=True)
class _Call:
    """The request as :class:`TokenAuthority` reads a gRPC call (metadata, TLS peer)."""

    token: str | None
    cn: str | None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return () if self.token is None else ((METADATA_KEY, f"Bearer {self.token}"),)

    def auth_context(self) -> dict[str, list[bytes]]:
        if self.cn is None:
            return {}
        return {"transport_security_type": [b"ssl"], CN_KEY: [self.cn.encode()]}


def credentials(header: str | None) -> tuple[str | None, str | None]:
    """(user, token) from an Authorization header (Bearer or Basic); raises on junk."""
    if header is None:
        return None, None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer" and value:
        return None, value.strip()
    if scheme.lower() == "basic" and value:
        try:
            user, sep, token = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationError("malformed Basic credentials") from None
        if not sep or not token:
            raise AuthenticationError("malformed Basic credentials")
        return user or None, token
    raise AuthenticationError("unsupported Authorization scheme (use Bearer or Basic)")


def peer_common_name(sock: Any) -> str | None:
    """The CN of a verified client certificate on a TLS socket, else None."""
    getpeercert = getattr(sock, "getpeercert", None)
    cert = getpeercert() if getpeercert is not None else None
    if not cert:
        return None
    names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    return str(names[0]) if len(names) == 1 else None


def authorize(authority: TokenAuthority, header: str | None, cn: str | None) -> Identity:
    """The admin making the request; AuthenticationError (401) or PermissionError (403)."""
    user, token = credentials(header)
    identity = authority.identify(_Call(token, cn))
    if user is not None and user != identity.id:
        raise AuthenticationError("the Basic user name is not the token's identity")
    if identity.role != "admin":
        raise PermissionError(f"identity {identity.id!r} ({identity.role}) is not an admin")
    return identity


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: drop instead of growing threads
            return
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("dashboard connection from %s failed", client_address, exc_info=True)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def _handler(
    server: AggregationServer, authority: TokenAuthority, poll_s: float, tls: bool
) -> type[BaseHTTPRequestHandler]:
    pages = {path: ((STATIC / name).read_bytes(), ctype) for path, (name, ctype) in PAGES.items()}

    def heartbeat_interval(job_id: str) -> float:
        try:
            return server.job_config(job_id).participants.heartbeat_interval_s
        except FedHEError:
            return 30.0

    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_S
        server_version = "fedhe-dashboard"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("dashboard %s " + format, self.client_address[0], *args)

        def _send(self, status: HTTPStatus, body: bytes, ctype: str, **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in {**SECURITY_HEADERS, **headers}.items():
                self.send_header(name, value)
            if tls:
                self.send_header("Strict-Transport-Security", "max-age=31536000")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: HTTPStatus, message: str, **headers: str) -> None:
            body = json.dumps({"error": message}).encode()
            self._send(status, body, "application/json", **headers)

        def _authorized(self) -> bool:
            try:
                authorize(
                    authority, self.headers.get("Authorization"), peer_common_name(self.connection)
                )
            except AuthenticationError as exc:
                self._error(HTTPStatus.UNAUTHORIZED, exc.message, **{"WWW-Authenticate": REALM})
                return False
            except PermissionError as exc:
                self._error(HTTPStatus.FORBIDDEN, str(exc))
                return False
            return True

        def do_GET(self) -> None:
            if not self._authorized():
                return
            url = urlsplit(self.path)
            if url.path in pages:
                body, ctype = pages[url.path]
                self._send(HTTPStatus.OK, body, ctype)
            elif url.path == API:
                self._state(parse_qs(url.query).get("job", [None])[0])
            else:
                self._error(HTTPStatus.NOT_FOUND, "not found")

        def do_HEAD(self) -> None:
            self.do_GET()

        def _state(self, job: str | None) -> None:
            if job is not None and not JOB_ID.match(job):
                self._error(HTTPStatus.BAD_REQUEST, "job must be a job id")
                return
            state = dashboard_state(server.db, server.clock(), heartbeat_interval, job, poll_s)
            body = json.dumps(state, separators=(",", ":")).encode()
            self._send(HTTPStatus.OK, body, "application/json")

        def _refuse(self) -> None:
            if self._authorized():
                self._error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only", Allow="GET, HEAD")

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    return Handler


def _tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.insecure or config.tls is None:
        return None
    tls = config.tls
    assert tls.cert_file and tls.key_file  # the config check requires both
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.ca_file:  # client certificates are checked when sent (browsers send none)
            context.load_verify_locations(tls.ca_file)
            context.verify_mode = ssl.CERT_OPTIONAL
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"dashboard TLS: {exc}") from None
    return context


class Dashboard:
    """The dashboard's HTTP(S) server on its own thread."""

    def __init__(
        self, server: AggregationServer, config: ServerConfig, authority: TokenAuthority
    ) -> None:
        assert config.dashboard is not None
        listen = config.dashboard.listen
        host, port = host_of(listen), int(listen.rsplit(":", 1)[1])
        self._tls = _tls_context(config)
        handler = _handler(server, authority, config.dashboard.poll_interval_s, bool(self._tls))
        try:
            self._httpd = _Server((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"dashboard.listen {listen}: {exc.strerror}") from None
        if self._tls is not None:  # handshakes run in the handler threads, not the acceptor
            self._httpd.socket = self._tls.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="dashboard", daemon=True
        )

    @property
    def url(self) -> str:
        """The page's address."""
        scheme = "https" if self._tls is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/"

    def start(self) -> Dashboard:
        """Serve in the background; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
