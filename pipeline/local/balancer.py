"""The local load balancer: the stack's listeners on 127.0.0.1, forwarding to the local VMs.

It runs an asyncio event loop in a thread of the local AWS's process. For every HTTP and HTTPS
listener of a load balancer in the local AWS it listens on 127.0.0.1 at the listener's port (an HTTPS
listener terminates TLS with its certificate from the local ACM and its security policy:
:mod:`pipeline.local.tls`) and, for each request, finds the action of the listener's rules
(:mod:`pipeline.local.routing`: the weighted rule, the health gate's probe rules, the fixed 503
default, a redirect to HTTPS) and forwards the request to a healthy target that is not draining, or to
any target of a group that has no healthy one (it fails open, as an ALB does; ``stats["fail_open"]``
counts those requests), adding the ``X-Forwarded-*`` headers an ALB adds. The rules and the members of
the target groups are replaced as a whole by :meth:`Balancer.configure` whenever the local AWS
changed, so the next request follows the new weights. Idle connections are closed after the load
balancer's ``idle_timeout.timeout_seconds``.

Draining: a target is taken for a request (:meth:`Registry.acquire`) and given back when the response
has been relayed; the runner stops a target's VM only once no request is in flight to it. A target
that refuses the connection is given up for another one (nothing was sent yet); a failure after the
request was sent ends in 502 (504 after the idle timeout), as an ALB answers.

The same loop runs the health checks of the targets (:meth:`Balancer.watch`): ``GET`` of the target
group's path on the VM's port, judged by the group's matcher and thresholds.

HTTP/1.1 framing (keep-alive, chunked bodies, HEAD) is h11's, a small, pure-Python, well-kept
implementation of the protocol, so the balancer parses nothing by hand; asyncio gives the
concurrency without a thread per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import h11

from pipeline.local import tls
from pipeline.local.registry import HealthCheck, Registry
from pipeline.local.routing import Chooser, Fixed, Forward, Listener, Redirect, Request, location, route

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# Seconds a connection may sit without traffic when no listener says otherwise (an ALB's default); a
# listener follows its load balancer's idle_timeout.timeout_seconds (deploy.idle_timeout_seconds).
IDLE_TIMEOUT = 60.0
CONNECT_TIMEOUT = 5.0  # to a target
MAX_BODY = 1 << 20  # request bodies above this get 413 (the app itself takes 64 KiB)
# Health checks run at the target group's interval, but at least this often: a local VM answers in
# milliseconds, and AWS's 10 s cadence would only stretch every local rollout by tens of seconds.
MAX_PROBE_INTERVAL = 1.0
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
}
USER_AGENT = b"ELB-HealthChecker/2.0"
_KNOWN = {s.value for s in http.HTTPStatus}


class Balancer:
    """The local load balancer and health checker (one event-loop thread)."""

    def __init__(
        self,
        registry: Registry,
        host: str = HOST,
        chooser: Chooser | None = None,
        on_health: Callable[[str], None] = lambda _id: None,
    ) -> None:
        self.registry = registry
        self.host = host
        self.chooser = chooser or Chooser()
        self.on_health = on_health  # called (in the loop's thread) when a target's health changed
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="cloud-balancer", daemon=True)
        self.listeners: dict[int, Listener] = {}
        self.members: dict[str, tuple[str, ...]] = {}
        self.servers: dict[int, asyncio.Server] = {}
        self.errors: dict[int, str] = {}  # port -> why it is not served
        self.probes: dict[str, asyncio.Task[None]] = {}
        self.connections: set[asyncio.Task[Any]] = set()
        self.stats: Counter[str] = Counter()

    # -- life cycle (from any thread) ------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self, grace: float = 10.0) -> None:
        """Stop listening, let requests in flight finish (up to ``grace`` seconds), stop the loop."""
        if not self.thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self.call(self._shutdown(grace), timeout=grace + 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def configure(self, listeners: Sequence[Listener], members: Mapping[str, Sequence[str]]) -> None:
        """Serve exactly ``listeners`` from now on, with ``members`` (group ARN -> targets)."""
        self.call(self._configure(list(listeners), {k: tuple(v) for k, v in members.items()}))

    def watch(self, instance_id: str, port: int, check: HealthCheck) -> None:
        """Start health-checking ``instance_id`` on host port ``port``."""
        self.loop.call_soon_threadsafe(self._watch, instance_id, port, check)

    def unwatch(self, instance_id: str) -> None:
        self.loop.call_soon_threadsafe(self._unwatch, instance_id)

    def status(self) -> list[dict[str, Any]]:
        out = [
            {
                "port": port,
                "load_balancer": lst.load_balancer,
                "dns_name": lst.dns_name,
                "protocol": lst.protocol,
                "error": "",
            }
            for port, lst in sorted(self.listeners.items())
            if port in self.servers
        ]
        out += [
            {"port": port, "load_balancer": "", "dns_name": "", "protocol": "", "error": why}
            for port, why in sorted(self.errors.items())
        ]
        return out

    # -- in the loop ---------------------------------------------------------------------------------------

    async def _configure(self, listeners: list[Listener], members: dict[str, tuple[str, ...]]) -> None:
        wanted: dict[int, Listener] = {}
        errors: dict[int, str] = {}
        for lst in sorted(listeners, key=lambda item: (item.port, item.load_balancer)):
            if lst.port in wanted:
                errors[lst.port] = (
                    f"port {lst.port} is the listener of {wanted[lst.port].load_balancer} already; "
                    f"{lst.load_balancer} is not served locally"
                )
                continue
            wanted[lst.port] = lst
        for port in list(self.servers):
            old = self.listeners.get(port)
            new = wanted.get(port)
            # another protocol, certificate or policy: the port is served anew (as an ALB does, new
            # connections get the new settings; those open finish with the old ones)
            if new is None or old is None or (old.protocol, old.tls) != (new.protocol, new.tls):
                server = self.servers.pop(port)
                server.close()
                log.info("load balancer: stopped listening on %s:%d", self.host, port)
        for port, lst in wanted.items():
            if port in self.servers:
                continue
            try:
                context = tls.context(lst.tls) if lst.tls is not None else None
            except ValueError as err:
                errors[port] = f"cannot serve HTTPS on {self.host}:{port} for {lst.load_balancer}: {err}"
                continue
            try:
                self.servers[port] = await asyncio.start_server(
                    functools.partial(self._accept, port), self.host, port, reuse_address=True, ssl=context
                )
                scheme = "https" if context is not None else "http"
                log.info("load balancer: %s on %s://%s:%d", lst.load_balancer, scheme, self.host, port)
            except OSError as err:
                errors[port] = f"cannot listen on {self.host}:{port} for {lst.load_balancer}: {err.strerror}"
        self.listeners = wanted
        self.members = members
        self.errors = errors

    async def _shutdown(self, grace: float) -> None:
        for server in self.servers.values():
            server.close()
        self.servers.clear()
        for task in self.probes.values():
            task.cancel()
        self.probes.clear()
        if self.connections:
            _, pending = await asyncio.wait(self.connections, timeout=grace)
            for task in pending:
                task.cancel()

    def _watch(self, instance_id: str, port: int, check: HealthCheck) -> None:
        self._unwatch(instance_id)
        self.probes[instance_id] = self.loop.create_task(self._probe_loop(instance_id, port, check))

    def _unwatch(self, instance_id: str) -> None:
        task = self.probes.pop(instance_id, None)
        if task is not None:
            task.cancel()

    async def _probe_loop(self, instance_id: str, port: int, check: HealthCheck) -> None:
        interval = min(check.interval, MAX_PROBE_INTERVAL)
        while True:
            started = time.monotonic()
            status, detail = await probe(self.host, port, check.path, check.timeout)
            if self.registry.observe(instance_id, status, detail):
                self.on_health(instance_id)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    # -- proxying ----------------------------------------------------------------------------------------

    def _accept(self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = self.loop.create_task(self._serve(port, reader, writer))
        self.connections.add(task)
        task.add_done_callback(self.connections.discard)

    async def _serve(self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        peer = writer.get_extra_info("peername") or ("?", 0)
        try:
            while True:
                idle = self._idle(port)
                try:
                    event = await _next_event(conn, reader, idle)
                    if not isinstance(event, h11.Request):
                        return  # closed, or idle too long
                    body = bytearray()
                    while True:
                        part = await _next_event(conn, reader, idle)
                        if isinstance(part, h11.Data):
                            body += part.data
                            if len(body) > MAX_BODY:
                                await _send_fixed(conn, writer, Fixed(413, body="request body too large"))
                                return
                        elif isinstance(part, h11.EndOfMessage):
                            break
                        else:
                            return
                except (h11.RemoteProtocolError, ValueError):
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        await _send_fixed(conn, writer, Fixed(400, body="bad request"))
                    return
                await self._handle(_Exchange(port, event, bytes(body), conn, writer, str(peer[0])))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (TimeoutError, ConnectionError, h11.LocalProtocolError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _idle(self, port: int) -> float:
        listener = self.listeners.get(port)
        return listener.idle_timeout if listener is not None else IDLE_TIMEOUT

    async def _handle(self, ex: _Exchange) -> None:
        self.stats["requests"] += 1
        listener = self.listeners.get(ex.port)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in ex.event.headers}
        request = Request(ex.event.method.decode("ascii"), ex.event.target.decode("latin-1"), headers)
        if listener is None:
            await _send_fixed(ex.conn, ex.writer, Fixed(503, body="no listener"))
            return
        action = route(listener, request)
        if isinstance(action, Fixed):
            await _send_fixed(ex.conn, ex.writer, action)
            return
        if isinstance(action, Redirect):
            self.stats[f"status:{action.status // 100}xx"] += 1
            await _send_fixed(ex.conn, ex.writer, Fixed(action.status), location(action, listener, request))
            return
        await self._forward(ex, action)

    async def _forward(self, ex: _Exchange, action: Forward) -> None:
        tried: set[str] = set()
        while True:
            pick = self.chooser.choose(action, self.members, self.registry.state, frozenset(tried))
            if pick is None:
                if tried:  # every target there was refused the connection or has no VM
                    self.stats["unreachable"] += 1
                    await _send_fixed(ex.conn, ex.writer, Fixed(502, body="bad gateway"))
                else:
                    self.stats["no_target"] += 1
                    await _send_fixed(ex.conn, ex.writer, Fixed(503, body="no target"))
                return
            target = pick.target
            tried.add(target)
            target_port = self.registry.acquire(target, any_health=pick.fail_open)
            if target_port is None:
                continue  # it stopped taking requests between the choice and now
            if pick.fail_open:
                self.stats["fail_open"] += 1
            try:
                try:
                    up_reader, up_writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, target_port), CONNECT_TIMEOUT
                    )
                except (OSError, TimeoutError) as err:
                    log.info("load balancer: %s refused the connection (%s); trying another", target, err)
                    self.stats["connect_failures"] += 1
                    continue
                self.stats[f"target:{target}"] += 1
                await self._relay(ex, up_reader, up_writer)
                return
            finally:
                self.registry.release(target)

    async def _relay(
        self, ex: _Exchange, up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter
    ) -> None:
        event, body, conn, writer, port = ex.event, ex.body, ex.conn, ex.writer, ex.port
        listener = self.listeners.get(port)
        proto = b"https" if listener is not None and listener.tls is not None else b"http"
        up = h11.Connection(h11.CLIENT)
        headers = [(k, v) for k, v in event.headers if k.lower() not in HOP_BY_HOP]
        forwarded_for = next((v for k, v in event.headers if k.lower() == b"x-forwarded-for"), b"")
        headers = [(k, v) for k, v in headers if not k.lower().startswith(b"x-forwarded-")]
        headers += [
            (b"X-Forwarded-For", (forwarded_for + b", " if forwarded_for else b"") + ex.client.encode()),
            (b"X-Forwarded-Proto", proto),
            (b"X-Forwarded-Port", str(port).encode()),
            (b"Connection", b"close"),
        ]
        if body or event.method in (b"POST", b"PUT", b"PATCH"):
            headers.append((b"Content-Length", str(len(body)).encode()))
        started = False
        try:
            out = up.send(h11.Request(method=event.method, target=event.target, headers=headers)) or b""
            if body:
                out += up.send(h11.Data(data=body)) or b""
            up_writer.write(out + (up.send(h11.EndOfMessage()) or b""))
            await up_writer.drain()
            while True:
                reply = await _next_event(up, up_reader, self._idle(port))
                if isinstance(reply, h11.Response):
                    break
                if not isinstance(reply, h11.InformationalResponse):
                    raise ConnectionError("the target closed the connection without answering")
            keep = [(k, v) for k, v in reply.headers if k.lower() not in HOP_BY_HOP - {b"content-length"}]
            self.stats[f"status:{reply.status_code // 100}xx"] += 1
            started = True
            await _send(
                conn, writer, h11.Response(status_code=reply.status_code, headers=keep, reason=reply.reason)
            )
            while True:
                part = await _next_event(up, up_reader, self._idle(port))
                if isinstance(part, h11.Data):
                    await _send(conn, writer, h11.Data(data=part.data))
                elif isinstance(part, h11.EndOfMessage):
                    await _send(conn, writer, h11.EndOfMessage())
                    return
                else:
                    raise ConnectionError("the target closed the connection in the middle of its answer")
        except (TimeoutError, ConnectionError, OSError, h11.RemoteProtocolError) as err:
            self.stats["target_errors"] += 1
            log.info("load balancer: request to port %d failed: %s", port, err)
            if not started:
                gateway = (
                    Fixed(504, body="target timed out")
                    if isinstance(err, TimeoutError)
                    else Fixed(502, body="bad gateway")
                )
                await _send_fixed(conn, writer, gateway)
            else:
                raise ConnectionError("answer cut short") from err
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()


@dataclass(frozen=True)
class _Exchange:
    """One client request being answered: the listener port it came in on, the request and its body,
    the client's connection (h11 state and stream) and the client's address."""

    port: int
    event: h11.Request
    body: bytes
    conn: h11.Connection
    writer: asyncio.StreamWriter
    client: str


# -- h11 over asyncio streams -----------------------------------------------------------------------------


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await asyncio.wait_for(reader.read(65536), timeout)
        conn.receive_data(data)


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, event: Any) -> None:
    data = conn.send(event)
    if data:
        writer.write(data)
        await writer.drain()


async def _send_fixed(
    conn: h11.Connection, writer: asyncio.StreamWriter, fixed: Fixed, redirect_to: str = ""
) -> None:
    body = fixed.body.encode()
    headers = [(b"Content-Type", fixed.content_type.encode()), (b"Content-Length", str(len(body)).encode())]
    if redirect_to:
        headers.append((b"Location", redirect_to.encode("latin-1", "replace")))
    reason = http.HTTPStatus(fixed.status).phrase.encode() if fixed.status in _KNOWN else b""
    await _send(conn, writer, h11.Response(status_code=fixed.status, headers=headers, reason=reason))
    if body:
        await _send(conn, writer, h11.Data(data=body))
    await _send(conn, writer, h11.EndOfMessage())


async def probe(host: str, port: int, path: str, timeout: float) -> tuple[int | None, str]:
    """One health check: ``GET path`` on ``host:port``; (status, "") or (None, why there was no answer)."""
    conn = h11.Connection(h11.CLIENT)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            headers = [
                (b"Host", f"{host}:{port}".encode()),
                (b"User-Agent", USER_AGENT),
                (b"Connection", b"close"),
            ]
            request = h11.Request(method=b"GET", target=path.encode(), headers=headers)
            writer.write((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
            await writer.drain()
            while True:
                event = await _next_event(conn, reader, timeout)
                if isinstance(event, h11.Response):
                    return event.status_code, ""
                if not isinstance(event, h11.InformationalResponse):
                    return None, "connection closed without an answer"
    except TimeoutError:
        return None, "request timed out"
    except (OSError, h11.RemoteProtocolError) as err:
        return None, str(getattr(err, "strerror", None) or err)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
