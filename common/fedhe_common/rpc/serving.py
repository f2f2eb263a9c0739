"""gRPC servers on asyncio: an idle long-poll or a stalled call costs no thread.

Each daemon runs one ``grpc.aio`` server on an event loop in a background thread.
Servicer methods are coroutines (async generators for server streams); they hand
blocking work (SQLite, SEAL, files) to a bounded thread pool with :func:`blocking`,
so a call that never sends its request, or a long-poll that waits for the next
round, holds only a coroutine. Requests are parsed here, not by gRPC, so a
malformed protobuf is ``INVALID_ARGUMENT``; every exception becomes a status in
one place (:func:`fedhe_common.rpc.errors.status_for`).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from fedhe_common import errors as e
from fedhe_common.config.models import TLSSection
from fedhe_common.errors import ConfigError, InvalidArgumentError
from fedhe_common.rpc.errors import ERROR_CLASS_KEY, status_for
from fedhe_common.rpc.transport import KEEPALIVE_OPTIONS, message_options, read_file

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Threads for blocking work of all calls together (not one per call).
BLOCKING_WORKERS = 32
# Calls in flight on the whole server; idle and stalled calls are cheap coroutines, so
# this only bounds memory. Past it, callers get RESOURCE_EXHAUSTED (agents retry).
MAX_CONCURRENT_RPCS = 8192
# HTTP/2 streams one connection may have open at once (further calls wait at the caller).
MAX_STREAMS_PER_CONNECTION = 128
# Read buffer a connection keeps between reads. Unbounded, gRPC sizes it by the reads
# the connection has seen (about 0.1-0.2 MB after one upload on a fast link) and keeps
# it while the connection idles, so memory grew with every client that ever uploaded
# (issue 15). 8 KiB (one small slice): ~0.1-0.2 s more CPU per 320 MB received.
READ_BUFFER_BYTES = 8192
# Receive window of each stream (bytes a client may send ahead of what the server has
# read). gRPC's default (BDP probing) grew it to ~2.5 MB per upload on a fast link, all
# of it buffered while the server validates chunks, so the server's memory followed the
# uploads in flight (issue 15). Fixed instead: one stream moves at most this much per
# round trip (512 KiB: ~5 MB/s at 100 ms, ~50 MB/s at 10 ms; uploads stream in
# parallel under the transfer slots).
STREAM_WINDOW_BYTES = 512 * 1024
# glibc heaps ("arenas") the server's threads share (:func:`limit_malloc_arenas`);
# glibc's default is 8 per core, each keeping its own free memory.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt parameter
# Seconds between two returns of the C heap's free pages (:class:`HeapTrimmer`).
TRIM_INTERVAL_S = 0.25

Register = Callable[[grpc.aio.Server], list[str]]


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on the server's thread pool and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the call with the status of ``exc`` (FedHE errors keep their message)."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, e.FedHEError):
        logger.info("rejected: %s", exc.message)
        context.set_trailing_metadata(((ERROR_CLASS_KEY, type(exc).__name__),))
        await context.abort(status_for(exc), exc.message)
    error_id = uuid.uuid4().hex[:12]
    logger.error("internal error %s", error_id, exc_info=exc)
    context.set_trailing_metadata((("fedhe-error-id", error_id),))
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (id {error_id})")


def _parser(method: MethodDescriptor) -> Callable[[bytes], Message]:
    cls = message_factory.GetMessageClass(method.input_type)

    def parse(raw: bytes) -> Message:
        try:
            return cls.FromString(raw)  # type: ignore[no-any-return]
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise InvalidArgumentError(
                f"malformed {method.input_type.name}: {exc}"
            ) from None

    return parse


async def _parsed(
    raw_iterator: AsyncIterator[bytes], parse: Callable[[bytes], Message]
) -> AsyncIterator[Message]:
    async for raw in raw_iterator:
        yield parse(raw)


def _handler(method: MethodDescriptor, impl: Callable[..., Any]) -> grpc.RpcMethodHandler:
    """One method: parse requests, call the coroutine, map exceptions to statuses."""
    parse = _parser(method)
    serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
    if method.server_streaming:

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                if method.client_streaming:
                    source = impl(_parsed(request, parse), context)
                else:
                    source = impl(parse(request), context)
                async for item in source:
                    yield item
            except Exception as exc:
                await abort(context, exc)

        if method.client_streaming:
            return grpc.stream_stream_rpc_method_handler(
                streaming, response_serializer=serialize
            )
        return grpc.unary_stream_rpc_method_handler(streaming, response_serializer=serialize)

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if method.client_streaming:
                return await impl(_parsed(request, parse), context)
            return await impl(parse(request), context)
        except Exception as exc:
            await abort(context, exc)

    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, response_serializer=serialize)
    return grpc.unary_unary_rpc_method_handler(unary, response_serializer=serialize)


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> str:
    """Serve ``servicer``'s coroutine methods named like ``service``'s methods.

    Methods the servicer lacks answer ``UNIMPLEMENTED``. Returns the full service name.
    """
    handlers = {
        m.name: _handler(m, getattr(servicer, m.name))
        for m in service.methods
        if hasattr(servicer, m.name)
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    return service.full_name


class ServerHandle:
    """A running ``grpc.aio`` server on its own event-loop thread."""

    def __init__(
        self,
        listen: str,
        insecure: bool,
        tls: TLSSection | None,
        max_message_bytes: int,
        register: Register,
        blocking_workers: int,
        stream_window_bytes: int = STREAM_WINDOW_BYTES,
    ) -> None:
        self.stream_window_bytes = stream_window_bytes
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(
            futures.ThreadPoolExecutor(blocking_workers, thread_name_prefix="rpc-work")
        )
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="grpc-aio", daemon=True
        )
        self._thread.start()
        self._server: grpc.aio.Server | None = None
        try:
            self.port = self._run(
                self._start(listen, insecure, tls, max_message_bytes, register)
            )
        except BaseException:
            self._close_loop()
            raise

    def _run(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()  # type: ignore[arg-type]

    async def _start(
        self,
        listen: str,
        insecure: bool,
        tls: TLSSection | None,
        max_message_bytes: int,
        register: Register,
    ) -> int:
        window: list[tuple[str, int]] = [("grpc.http2.bdp_probe", 1)]
        if self.stream_window_bytes:
            window = [
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", self.stream_window_bytes),
            ]
        server = grpc.aio.server(
            options=[
                *message_options(max_message_bytes),
                *KEEPALIVE_OPTIONS,
                ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
                ("grpc.experimental.tcp_max_read_buffer_size", READ_BUFFER_BYTES),
                *window,
            ],
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        )
        names = register(server)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection(
            (*names, health_name, reflection.SERVICE_NAME), server
        )
        if insecure:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, server_credentials(tls))
        if port == 0:
            raise ConfigError(f"cannot listen on {listen}")
        await server.start()
        self._server = server
        for name in [*names, ""]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return port

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let running ones finish for ``grace`` seconds, stop."""
        if self._server is not None:
            self._run(self._server.stop(grace))
            self._server = None
        self._close_loop()

    def _close_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


def limit_malloc_arenas(count: int = MALLOC_ARENAS) -> bool:
    """Let the process's threads share ``count`` glibc heaps; call before threads start.

    With one heap per busy thread (up to 8 per core), each kept the buffers its thread
    had freed, so the peak RSS grew with the uploads served at once (issue 15: 50
    clients 137 -> 128 MB). Returns False where the C library has no ``mallopt``.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, count))


class HeapTrimmer:
    """Hands the C heap's free pages back to the system every ``interval_s`` (glibc).

    The server's blocking work runs on many threads, and glibc gives each its own
    heap ("arena") and keeps what they free there for reuse: ciphertext-sized buffers
    left a few MB of free pages behind in every arena, so the peak RSS grew with the
    transfers in flight and the threads that had served them (issue 15: +30-45 MB
    at 50 clients). ``malloc_trim`` returns those pages; the buffers stay in the heap
    (pinning glibc's mmap threshold instead cost ~10x the page faults). A no-op
    where the C library has no ``malloc_trim`` (not glibc).
    """

    def __init__(self, interval_s: float = TRIM_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.trims = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._trim: Callable[[int], int] | None = None
        try:
            fn = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            return
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
        self._trim = fn

    @property
    def available(self) -> bool:
        """Whether this C library can trim its heap."""
        return self._trim is not None

    def trim(self) -> None:
        """Return the free pages of every arena now."""
        if self._trim is not None:
            self._trim(0)
            self.trims += 1

    def start(self) -> HeapTrimmer:
        """Trim in a daemon thread until :meth:`stop`."""
        if self._trim is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="heap-trim", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.trim()

    def stop(self) -> None:
        """Stop the thread (a trim in progress finishes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def server_credentials(tls: TLSSection | None) -> grpc.ServerCredentials:
    """TLS credentials; with ``ca_file`` set, clients must present a certificate it signed."""
    if tls is None or not tls.cert_file or not tls.key_file:
        raise ConfigError("TLS needs tls.cert_file and tls.key_file (or insecure on loopback)")
    key, cert = read_file(tls.key_file, "TLS key"), read_file(tls.cert_file, "TLS certificate")
    ca = read_file(tls.ca_file, "CA certificate") if tls.ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def create_server(
    listen: str,
    insecure: bool,
    tls: TLSSection | None,
    max_message_bytes: int,
    register: Register,
    blocking_workers: int = BLOCKING_WORKERS,
    stream_window_bytes: int = STREAM_WINDOW_BYTES,
) -> ServerHandle:
    """Build and start a server; ``register`` adds services and returns their names.

    ``stream_window_bytes``: each stream's fixed receive window (0: gRPC's bandwidth
    probing grows it).

    Health (``grpc.health.v1``) reports SERVING for every registered service; server
    reflection lists them all (``grpcurl -plaintext HOST:PORT list``).
    """
    return ServerHandle(
        listen, insecure, tls, max_message_bytes, register, blocking_workers, stream_window_bytes
    )
