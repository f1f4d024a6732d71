"""HTTP throughput and tail latency of erlang_web against OTP's own inets httpd, in one run; and
erlang_web past its connection limit, before and after a change, in one run.

Both servers run on this machine's Erlang, on loopback, and serve the same response to GET /
(22 bytes of text/plain). Each is driven by wrk with the same bounded, Lua-free invocation; the
baseline is inets httpd twice: as configured by default, and with TCP_NODELAY on its sockets
(its default sends headers and body in separate segments and meets delayed ACKs).

    .venv/bin/python bench/http.py [--duration 5] [--rounds 2] [--threads 2] [--connections 32]

All three servers run side by side; the measured runs are interleaved and the best round of each
is reported. Prints a table (requests/s, p50, p99, errors) and two verdicts: erlang_web's
requests/s against the faster baseline's, and its p99 against the lower baseline p99 (a server
can lead on one and trail on the other). Figures depend on what else the machine is doing;
compare within one run.

    .venv/bin/python bench/http.py --overload [--before REV] [--duration 10]

The load shapes of bench/overload.py (wrk -c 2000, then 1,100 slow clients, with health and
fresh-connection probes) against erlang_web with max_connections 1024: as of git REV with the
1024 open files the image's init process used to have, and this tree with 1024 and with
image.max_open_files (or this machine's hard limit, if lower). For each: wrk's counts, the probes'
answers and latency, the descriptor warnings logged and what the app counted.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# This file is called http.py: keep its own directory off the import path so that `import http`
# (used by http.client and the test helpers) finds the standard library.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import io  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from bench import overload as shapes  # noqa: E402
from pipeline.config import ImageSettings  # noqa: E402
from pipeline.erlang import CompiledApp, compile_app  # noqa: E402
from pipeline.proc import run, which  # noqa: E402
from tests.erlnode import Atom, ErlangWebNode, compile_erlang_web, free_port, wait_for  # noqa: E402

BODY = "Hello from erlang_web\n"
REPORT_MS = 1000  # erlang_web's log_interval in --overload

# The baseline handler: an inets httpd module answering GET / with the same body and type.
INETS_MODULE = r"""
-module(bench_inets_h).
-export([do/1]).
-include_lib("inets/include/httpd.hrl").
do(#mod{method = "GET", request_uri = "/"}) ->
    Body = <<"@BODY@">>,
    Head = [{code, 200}, {content_type, "text/plain; charset=utf-8"},
            {content_length, integer_to_list(byte_size(Body))}],
    {proceed, [{response, {response, Head, [Body]}}]};
do(_) ->
    {proceed, [{status, {404, "", "not found"}}]}.
""".replace("@BODY@", BODY.replace("\n", "\\n"))


@dataclass(frozen=True)
class Result:
    server: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


class InetsNode:
    """An ``erl`` running inets httpd with bench_inets_h on a loopback port."""

    def __init__(self, workdir: Path, nodelay: bool) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.nodelay = nodelay
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> InetsNode:
        src = self.workdir / "bench_inets_h.erl"
        if not (self.workdir / "bench_inets_h.beam").exists():
            src.write_text(INETS_MODULE)
            run(["erlc", "-o", self.workdir, src], what="erlc")
        config = (
            f'[{{port, {self.port}}}, {{bind_address, {{127,0,0,1}}}}, {{server_name, "bench"}}, '
            f'{{server_root, "{self.workdir}"}}, {{document_root, "{self.workdir}"}}, '
            "{modules, [bench_inets_h]}, {max_clients, 1024}, {keep_alive, true}, "
            "{max_keep_alive_request, 1000000000}]"
        )
        argv = ["erl", "-noshell", "-noinput", "-pa", str(self.workdir)]
        if self.nodelay:
            # inets 8 cannot pass socket options for an ip_comm listener (socket_type
            # {ip_comm, Opts} only works with an fd), so set the node's default listen options.
            argv += ["-kernel", "inet_default_listen_options", "[{nodelay,true}]"]
        argv += ["-eval", f"ok = inets:start(), {{ok, _}} = inets:start(httpd, {config})."]
        self.proc = subprocess.Popen(
            argv, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: _answers(self.port, self.proc), 30, f"inets httpd on {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _answers(port: int, proc: subprocess.Popen[bytes] | None) -> bool | None:
    if proc is not None and proc.poll() is not None:
        raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return True if resp.read().decode() == BODY else None
    except OSError:
        return None


_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, seconds: int, threads: int, connections: int) -> tuple[float, float, float, int]:
    """Run wrk once: requests/s, p50 ms, p99 ms, errors (socket errors + non-2xx)."""
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency", url]
    out = run(argv, timeout=seconds + 60, what="wrk").stdout.decode()
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    lat = {p: float(v) * _UNIT_MS[u] for p, v, u in _LATENCY.findall(out)}
    if rps is None or set(lat) != {"50", "99"}:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return float(rps.group(1)), lat["50"], lat["99"], errors


def wrk_counts(url: str, seconds: int, threads: int, connections: int) -> dict[str, float]:
    """Run wrk once and keep every count it reports: requests/s, non-2xx, and each socket error."""
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", url]
    out = run(argv, timeout=seconds + 60, what="wrk").stdout.decode()
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if rps is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    counts: dict[str, float] = {"req/s": float(rps.group(1))}
    done = re.search(r"^\s+(\d+) requests in", out, re.M)
    counts["responses"] = int(done.group(1)) if done else 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    counts["non-2xx"] = int(non2xx.group(1)) if non2xx else 0
    for kind, n in re.findall(r"(connect|read|write|timeout) (\d+)", out):
        counts[f"{kind} errors"] = int(n)
    return counts


def steady(args: argparse.Namespace) -> None:
    """Keep-alive GET / against inets httpd (both configurations), interleaved rounds."""
    runs: dict[str, list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        work = Path(tmp)
        print("compiling erlang_web ...", file=sys.stderr)
        app = compile_erlang_web(work / "build")
        web = ErlangWebNode(app, work / "erlang_web", storage=Atom("ram"), greeting=BODY)
        (work / "inets").mkdir()
        baselines = [InetsNode(work / "inets", nodelay=True), InetsNode(work / "inets", nodelay=False)]
        try:
            web.start()
            for node in baselines:
                node.start()
            servers = [("erlang_web", web.port)]
            servers += [
                (f"inets httpd ({'nodelay' if b.nodelay else 'defaults'})", b.port) for b in baselines
            ]
            # Interleaved rounds, so a burst of other load on the machine hits every server alike.
            for rnd in range(args.rounds):
                for name, port in servers:
                    url = f"http://127.0.0.1:{port}/"
                    if rnd == 0 and args.warmup:
                        wrk(url, args.warmup, args.threads, args.connections)
                    rps, p50, p99, errors = wrk(url, args.duration, args.threads, args.connections)
                    print(f"  round {rnd + 1}: {name}: {rps:,.0f} req/s, p99 {p99:.2f} ms", file=sys.stderr)
                    runs.setdefault(name, []).append(Result(name, rps, p50, p99, errors))
        finally:
            for node in baselines:
                node.stop()
            web.stop()
            web.kill()

    # Best round per server: other load on the machine only ever slows a run down.
    results = [max(rs, key=lambda r: r.requests_per_s) for rs in runs.values()]
    print(
        f"\nGET / on loopback, keep-alive, wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
        f"best of {args.rounds} interleaved rounds"
    )
    print(f"{'server':<24} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for r in results:
        print(f"{r.server:<24} {r.requests_per_s:>10,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>7}")
    print()
    for line in verdict(results[0], results[1:]):
        print(line)


def verdict(ours: Result, baselines: list[Result]) -> list[str]:
    """One line for throughput against the best baseline's, one for p99 against the best baseline p99.

    Each figure gets its own word: a server can be ahead on requests/s and behind on its tail.
    """
    fastest = max(baselines, key=lambda r: r.requests_per_s)
    tightest = min(baselines, key=lambda r: r.p99_ms)
    rps = ours.requests_per_s / fastest.requests_per_s
    p99 = ours.p99_ms / tightest.p99_ms
    return [
        f"requests/s: erlang_web / {fastest.server}: {rps:.2f}x "
        f"({'at or above' if rps >= 1 else 'BELOW'} the baseline)",
        f"p99: erlang_web / {tightest.server}: {p99:.2f}x "
        f"({'at or under' if p99 <= 1 else 'WORSE than'} the baseline)",
    ]


def app_at(rev: str, work: Path) -> CompiledApp:
    """apps/erlang_web as it was at git revision ``rev``, compiled by the pipeline's compile step."""
    src = work / "src"
    src.mkdir(parents=True)
    archive = run(["git", "-C", REPO, "archive", rev, "apps/erlang_web"], what="git archive").stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(src, filter="data")
    return compile_app(src / "apps" / "erlang_web", work / "build", cwd=src)


def overload(args: argparse.Namespace) -> None:
    """The load shapes of bench/overload.py against erlang_web, before and after, in one run."""
    image_limit = ImageSettings().max_open_files
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        work = Path(tmp)
        print("compiling erlang_web ...", file=sys.stderr)
        now = compile_erlang_web(work / "now")
        variants: list[tuple[str, CompiledApp, int]] = []
        if args.before:
            variants.append((f"{args.before}, 1024 files", app_at(args.before, work / "before"), 1024))
        variants.append(("this tree, 1024 files", now, 1024))
        # The image's limit, or as close as this machine lets an unprivileged process go.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        raised = image_limit if hard == resource.RLIM_INFINITY else min(image_limit, hard)
        note = "" if raised == image_limit else f" (the image's {image_limit}: this machine's hard limit)"
        variants.append((f"this tree, {raised} files{note}", now, raised))
        rows = []
        for label, app, nofile in variants:
            print(f"{label}: wrk -c {args.overload_connections}, then 1,100 slow clients", file=sys.stderr)
            rows.append((label, *overload_one(app, work / f"node-{len(rows)}", nofile, args)))

    print(
        f"\nerlang_web past max_connections (1024) on loopback: open-files limit of the node as given; "
        f"probes on fresh connections every {shapes.PROBE_EVERY_S * 1000:.0f} ms"
    )
    for label, wrk_row, slow_row in rows:
        print(f"\n{label}")
        for line in wrk_row + slow_row:
            print(f"  {line}")


def overload_one(
    app: CompiledApp, workdir: Path, nofile: int, args: argparse.Namespace
) -> tuple[list[str], list[str]]:
    # Reports every second, so each shape's counts are in the log soon after it ends (an app
    # from before the reports ignores the key).
    node = ErlangWebNode(app, workdir, storage=Atom("ram"), greeting=BODY, log_interval=REPORT_MS)
    node.max_open_files = nofile
    node.start()
    try:
        url = f"http://127.0.0.1:{node.port}/"
        since = node.log_path.stat().st_size
        with shapes.probing(node.port, ("/health", "/")) as probes:
            counts = wrk_counts(url, args.duration, args.threads, args.overload_connections)
        wrk_row = [
            f"wrk -t{args.threads} -c{args.overload_connections} -d{args.duration}s GET /: "
            + ", ".join(f"{k} {v:,.0f}" for k, v in counts.items()),
            *(p.summary() for p in probes),
            f"/health checks an ALB would pass (200 within {shapes.ALB_HEALTH_TIMEOUT_S:.0f} s): "
            f"{probes[0].ok_in_time()} of {len(probes[0].answers)}",
            f"descriptor warnings logged: {shapes.descriptor_warnings(node.log_path, since)}",
        ]
        settle(node)
        wrk_row.append(f"the app counted: {shapes.describe_counts(shapes.app_counts(node.log_path, since))}")
        since = node.log_path.stat().st_size
        with shapes.probing(node.port, ("/health",)) as probes:
            slow = shapes.slow_clients(node.port)
        time.sleep(2 * REPORT_MS / 1000)
        slow_row = [
            slow.summary(),
            probes[0].summary(),
            f"descriptor warnings logged: {shapes.descriptor_warnings(node.log_path, since)}",
            f"the app counted: {shapes.describe_counts(shapes.app_counts(node.log_path, since))}",
        ]
        return wrk_row, slow_row
    finally:
        node.stop()
        node.kill()


def settle(node: ErlangWebNode) -> None:
    """Wait until the node serves a fresh connection again after a load shape, and has reported."""
    wait_for(lambda: True if shapes.probe_once(node.port, "/")[1] == 200 else None, 60, "the node to recover")
    time.sleep(2 * REPORT_MS / 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured warm-up (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="measured runs per server, interleaved")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--overload", action="store_true", help="the overload shapes instead (see above)")
    parser.add_argument("--overload-connections", type=int, default=2000, help="wrk -c in --overload")
    parser.add_argument("--before", metavar="REV", help="with --overload: also the app as of git REV")
    args = parser.parse_args()
    which("wrk", hint="install the Debian package wrk (./setup.sh)")
    if args.overload:
        overload(args)
    else:
        steady(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
