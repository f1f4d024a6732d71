"""The process that serves the local AWS: moto's server application behind a small journal.

Run as ``python -m pipeline.local.moto_app --port P --state DIR`` (``server.ensure_running`` does).

What it adds to a plain moto server:

- **CloudFormation's full life cycle.** moto cannot delete some resources a stack made (its route
  tables); ``cfn_fixes.apply`` gives them the delete CloudFormation performs on AWS, before the journal
  is replayed (a replayed DeleteStack must succeed as it did) and for good (``/moto-api/reset`` keeps it).
- **AWS's rules where moto has none** (``aws_rules.apply``): encryption and parents of EBS direct
  snapshots, idempotency tokens, unique AMI names; a delta snapshot holds its parent's blocks.
- **Amazon's images.** On start (and after ``/moto-api/reset``) the PV-GRUB AKIs of the PV regions
  are added as Amazon-owned images (``amazon_images.seed``), so the pipeline finds them as on AWS.
- **State that survives a restart.** moto keeps everything in memory. Every request that changes
  state (EC2/CloudFormation/... actions other than Describe*/List*/Get*/Validate*, and every REST
  request other than GET/HEAD) is appended to ``DIR/journal.jsonl`` once moto has answered it; large
  bodies (EBS snapshot blocks) go to ``DIR/blobs/<sha256>``, so identical blocks are stored once. On
  start the journal is replayed in order. Replay reproduces the same resource ids and creation times:
  requests are handled one at a time, moto's random generator is seeded per journal entry (from the
  journal's own seed and the entry's number), and moto's clock reads the entry's original time while it
  is replayed. The EC2 backends of all regions are created up front (from a fixed seed), because moto
  creates a region's default VPC on first use, which may be a read. The journal is flushed after each
  entry: it survives the server being killed, not a power cut (a torn last line is skipped). A journal
  written by another moto version may not replay identically; ``invoke local.down --wipe`` starts over.
- **Clear errors for what moto lacks.** An action moto does not implement answers HTTP 501 with error
  code ``NotImplemented`` instead of an HTML 500 page, so clients get a ClientError without retrying.
- ``GET /_pipeline/local`` says which state directory this server belongs to.
- **The local cloud** (``cloud.py``): threads beside the server that run the instances of the Auto
  Scaling groups as QEMU VMs, report their real target health and serve the load balancers'
  listeners on 127.0.0.1; ``/_pipeline/cloud`` is its control endpoint.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import io
import json
import logging
import os
import secrets
import signal
import sys
import threading
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from pipeline.local import amazon_images, aws_rules, cfn_fixes

log = logging.getLogger(__name__)

JOURNAL = "journal.jsonl"
BLOBS = "blobs"
BLOB_MIN = 16 * 1024  # bodies at least this large are stored once by digest beside the journal
READ_PREFIXES = ("Describe", "List", "Get", "Validate", "Estimate", "Search", "Lookup")
STATUS_PATH = "/_pipeline/local"
# Request headers that depend on the connection, not on the request.
SKIP_HEADERS = {"CONTENT_LENGTH", "HTTP_CONNECTION", "HTTP_TRANSFER_ENCODING", "HTTP_EXPECT"}

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


# -- which requests change state -------------------------------------------------------------------


def is_mutating(environ: dict[str, Any], body: bytes) -> bool:
    """Whether a request may change the local AWS (and so must be journaled)."""
    method = environ.get("REQUEST_METHOD", "GET").upper()
    if method in ("GET", "HEAD", "OPTIONS"):
        return False
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return not target.rsplit(".", 1)[-1].startswith(READ_PREFIXES)
    action = _query_action(environ, body)
    if action is not None:
        return not action.startswith(READ_PREFIXES)
    return True  # REST APIs (EBS direct, S3): every non-GET changes something


def _query_action(environ: dict[str, Any], body: bytes) -> str | None:
    params = parse_qs(environ.get("QUERY_STRING", ""))
    if "form-urlencoded" in environ.get("CONTENT_TYPE", ""):
        params.update(parse_qs(body.decode("utf-8", "replace")))
    values = params.get("Action")
    return values[0] if values else None


# -- moto's clock during replay ----------------------------------------------------------------------

_frozen_now: dt.datetime | None = None


class _ReplayDatetime(dt.datetime):
    """``datetime`` whose ``now()`` returns the replayed entry's time while a journal is replayed."""

    @classmethod
    def now(cls, tz: dt.tzinfo | None = None) -> Any:
        if _frozen_now is None:
            return dt.datetime.now(tz)
        return _frozen_now.astimezone(tz) if tz else _frozen_now.replace(tzinfo=None)


def _install_replay_clock() -> None:
    """Make moto's ``utcnow()`` (the clock of its EC2, EBS and CloudFormation models) replayable."""
    from moto.core import utils

    shim = types.SimpleNamespace(**{k: getattr(dt, k) for k in dir(dt) if not k.startswith("__")})
    shim.datetime = _ReplayDatetime
    utils.datetime = shim  # type: ignore[attr-defined,assignment]


# -- the journal -------------------------------------------------------------------------------------


class Journal:
    """Append-only record of the state-changing requests, with large bodies stored by digest."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / JOURNAL
        self.blobs = directory / BLOBS
        self.seed = ""
        self.entries = 0

    def load(self) -> list[dict[str, Any]]:
        """Read the journal (creating an empty one with a fresh seed); return its entries."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.path.is_file():
            self.reset()
            return []
        lines = [line for line in self.path.read_bytes().split(b"\n") if line.strip()]
        header = json.loads(lines[0])
        self.seed = str(header["seed"])
        entries = []
        for number, line in enumerate(lines[1:], start=1):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines) - 1:  # only the last line can be torn by a kill
                    raise
                log.warning("journal: dropping a torn last line")
                tmp = self.path.with_name(f".{JOURNAL}.tmp")
                tmp.write_bytes(b"\n".join(lines[:-1]) + b"\n")
                os.replace(tmp, self.path)
        self.entries = len(entries)
        return entries

    def reset(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.seed = secrets.token_hex(8)
        self.entries = 0
        header = {"journal": 1, "seed": self.seed}
        tmp = self.path.with_name(f".{JOURNAL}.tmp")
        tmp.write_text(json.dumps(header) + "\n")
        os.replace(tmp, self.path)

    def random_seed(self, number: int) -> str:
        return f"{self.seed}-{number}"

    def append(self, environ: dict[str, Any], body: bytes, at: dt.datetime) -> None:
        entry: dict[str, Any] = {
            "n": self.entries + 1,
            "at": at.isoformat(),
            "method": environ.get("REQUEST_METHOD", "GET"),
            "path": environ.get("RAW_URI") or environ.get("REQUEST_URI") or _path_and_query(environ),
            "headers": _headers(environ),
        }
        if len(body) >= BLOB_MIN:
            digest = hashlib.sha256(body).hexdigest()
            blob = self.blobs / digest
            if not blob.is_file():
                self.blobs.mkdir(exist_ok=True)
                tmp = blob.with_name(f".{digest}.tmp")
                tmp.write_bytes(body)
                os.replace(tmp, blob)
            entry["blob"] = digest
        else:
            entry["body"] = base64.b64encode(body).decode("ascii")
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, separators=(",", ":")) + "\n")
            f.flush()
        self.entries += 1

    def body(self, entry: dict[str, Any]) -> bytes:
        if "blob" in entry:
            return (self.blobs / str(entry["blob"])).read_bytes()
        return base64.b64decode(str(entry.get("body", "")))


def _path_and_query(environ: dict[str, Any]) -> str:
    path = str(environ.get("PATH_INFO", "/"))
    query = environ.get("QUERY_STRING")
    return f"{path}?{query}" if query else path


def _headers(environ: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in environ.items():
        if key in SKIP_HEADERS:
            continue
        if key.startswith("HTTP_"):
            out[key[5:].replace("_", "-").title()] = str(value)
        elif key == "CONTENT_TYPE" and value:
            out["Content-Type"] = str(value)
    return out


# -- the application ---------------------------------------------------------------------------------


class LocalAws:
    """WSGI application: moto's dispatcher, one request at a time, with the journal around it."""

    def __init__(self, state_dir: Path, account_id: str | None = None) -> None:
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self.moto: WsgiApp = DomainDispatcherApplication(create_backend_app)
        self.state_dir = state_dir
        self.account_id = account_id or DEFAULT_ACCOUNT_ID
        self.journal = Journal(state_dir)
        self.lock = threading.Lock()  # moto is not written for concurrent requests; ids must replay
        self.replayed = 0
        self.replay_failures = 0
        # Paths served by something else in this process (the local cloud's control endpoint), and
        # what runs after a request that changed something (with the lock held, before the answer).
        self.extensions: dict[str, WsgiApp] = {}
        self.change_hooks: list[Callable[[dict[str, Any]], None]] = []

    # start-up

    def start(self) -> None:
        """Seed Amazon's images and replay the journal (before the server accepts requests)."""
        global _frozen_now
        _install_replay_clock()
        cfn_fixes.apply()  # patches moto's classes, so it outlives a reset
        aws_rules.apply()  # what AWS refuses or guarantees where moto does not (aws_rules.py)
        entries = self.journal.load()
        self._prime()
        from werkzeug.test import EnvironBuilder

        for entry in entries:
            body = self.journal.body(entry)
            builder = EnvironBuilder(
                path=entry["path"], method=entry["method"], headers=entry["headers"], data=body
            )
            environ = builder.get_environ()
            _frozen_now = dt.datetime.fromisoformat(entry["at"])
            try:
                self._seed_random(self.journal.random_seed(int(entry["n"])))
                status, _, _ = self._call(environ, body)
            except Exception as err:  # a request that failed when it was made fails again
                log.debug("replay of entry %s raised %r", entry["n"], err)
                status = "500"
            finally:
                _frozen_now = None
                builder.close()
            self.replayed += 1
            if int(status.split()[0]) >= 500:
                self.replay_failures += 1
        log.info("replayed %d requests (%d failed)", self.replayed, self.replay_failures)

    def _prime(self) -> None:
        """Create every region's EC2 backend and Amazon's images from a fixed seed (no journal entry)."""
        from moto.ec2.models import ec2_backends

        self._seed_random(f"{self.journal.seed}-prime")
        backends = ec2_backends[self.account_id]
        for region in backends.regions:
            backends[region]
        amazon_images.seed(self.account_id)

    @staticmethod
    def _seed_random(value: str) -> None:
        from moto.moto_api._internal import mock_random

        mock_random.seed(value)

    # serving

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if path == STATUS_PATH:
            return self._status(start_response)
        if path in self.extensions:
            return self.extensions[path](environ, start_response)
        body = _read_body(environ)
        with self.lock:
            if path.startswith("/moto-api/"):
                status, headers, chunks = self._call(environ, body)
                if path.rstrip("/") == "/moto-api/reset" and status.startswith("200"):
                    self.journal.reset()
                    self._prime()
            else:
                status, headers, chunks = self._serve(environ, body)
        start_response(status, headers)
        return chunks

    def _serve(self, environ: dict[str, Any], body: bytes) -> tuple[str, list[tuple[str, str]], list[bytes]]:
        global _frozen_now
        mutating = is_mutating(environ, body)
        at = dt.datetime.now(dt.UTC)
        if mutating:
            self._seed_random(self.journal.random_seed(self.journal.entries + 1))
            # moto reads the journaled time while it handles the request, as it will on replay, so a
            # request that straddles a second boundary gets the same creation time both times.
            _frozen_now = at
        try:
            result = self._call(environ, body)
        except NotImplementedError as err:
            return _not_implemented(environ, body, str(err))
        finally:
            _frozen_now = None
        if mutating:
            self.journal.append(environ, body, at)
            for hook in self.change_hooks:
                hook(environ)
        return result

    def _call(self, environ: dict[str, Any], body: bytes) -> tuple[str, list[tuple[str, str]], list[bytes]]:
        environ = dict(environ, **{"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))})
        captured: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            captured["status"], captured["headers"] = status, headers

        result = self.moto(environ, start_response)
        try:
            chunks = [b"".join(result)]
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return captured["status"], captured["headers"], chunks

    def _status(self, start_response: StartResponse) -> list[bytes]:
        data = {
            "state_dir": str(self.state_dir),
            "pid": os.getpid(),
            "journal_entries": self.journal.entries,
            "replayed": self.replayed,
            "replay_failures": self.replay_failures,
        }
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(data).encode()]


def _read_body(environ: dict[str, Any]) -> bytes:
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    length = environ.get("CONTENT_LENGTH")
    if length:
        return bytes(stream.read(int(length)))
    if environ.get("wsgi.input_terminated"):
        return bytes(stream.read())
    return b""


def _not_implemented(
    environ: dict[str, Any], body: bytes, detail: str
) -> tuple[str, list[tuple[str, str]], list[bytes]]:
    """An AWS-style error for an action moto lacks: HTTP 501, which clients do not retry."""
    message = f"not implemented by the local AWS (moto): {detail}".replace("&", "and").replace("<", "(")
    status = "501 Not Implemented"
    if "form-urlencoded" in environ.get("CONTENT_TYPE", "") or _query_action(environ, body):
        if "Version=2016-11-15" in body.decode("utf-8", "replace"):  # EC2's query dialect
            xml = (
                "<Response><Errors><Error><Code>NotImplemented</Code>"
                f"<Message>{message}</Message></Error></Errors><RequestID>local</RequestID></Response>"
            )
        else:
            xml = (
                "<ErrorResponse><Error><Type>Sender</Type><Code>NotImplemented</Code>"
                f"<Message>{message}</Message></Error><RequestId>local</RequestId></ErrorResponse>"
            )
        return status, [("Content-Type", "text/xml")], [xml.encode()]
    payload = json.dumps({"__type": "NotImplemented", "message": message}).encode()
    headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", "NotImplemented")]
    return status, headers, [payload]


def main(argv: list[str] | None = None) -> None:
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser(description="the pipeline's local AWS (moto with a journal)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True, help="directory of the journal")
    parser.add_argument("--cloud", default="", help="settings of the local cloud (JSON; see cloud.py)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    os.environ.setdefault("MOTO_PORT", str(args.port))

    from moto.moto_server.werkzeug_app import MotoRequestHandler

    from pipeline.local.cloud import LocalCloud
    from pipeline.local.control import PATH as CLOUD_PATH
    from pipeline.local.control import CloudConfig

    app = LocalAws(args.state.resolve())
    app.start()
    endpoint = f"http://{args.host}:{args.port}"
    cloud = LocalCloud(app.state_dir, endpoint, app.lock, app.account_id, CloudConfig.from_json(args.cloud))
    app.extensions[CLOUD_PATH] = cloud.handle
    app.change_hooks.append(cloud.after_change)
    server = make_server(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("local AWS on http://%s:%d, state in %s", args.host, args.port, args.state)
    cloud.start()  # after the server listens: the cloud reads snapshot blocks through it
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
        cloud.stop()  # shuts the VMs down; the listening socket is closed first, so nobody waits on it


if __name__ == "__main__":
    main()
