"""A rebar3 project's dependencies, resolved offline, and the facts of its own applications.

Every dependency named in ``rebar.config`` (the project's, its umbrella apps', and those of its
dependencies, level by level as rebar3 does: the first one found of a name wins) resolves from, in
this order:

1. ``_checkouts/NAME`` in the project (rebar3's own override);
2. its locked or declared source: a **local git repository** (``file://`` URL or a path; remote URLs
   are not fetched) at the locked commit, or the branch, tag or ref's commit; a **hex package** in
   rebar3's package cache (``$REBAR_CACHE_DIR`` or ``~/.cache/rebar3``, ``hex/hexpm/packages``), the
   highest cached version the requirement allows, checked against the lock's hash when there is one;
3. an **Erlang library installed on this machine** under the OTP root (a Debian ``erlang-*``
   package), which relx then takes from the code path as it does OTP's own.

Applications an app's ``.app.src`` needs that no dependency provides must be OTP's or installed
libraries; the installed ones that are not OTP's count as dependencies too. Each dependency's
identity (commit, package checksum, or digest of the installed files) is a build input, so a
changed dependency makes a new build. One that cannot be resolved is one line naming it.
"""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import erlang, hexpkg, project
from pipeline.errors import ConfigError
from pipeline.manifest import digest_of, sha256_file
from pipeline.proc import run

PROJECT_SCRIPT = Path(__file__).parent / "erl" / "project.escript"


@dataclass(frozen=True)
class Dependency:
    """One resolved dependency."""

    name: str
    source: str  # checkout | git | hex | installed
    version: str  # its .app.src/.app vsn, or the hex version
    identity: str  # what pins its content: git commit, package sha256, digest of the files
    location: str  # where it is: a path, a git URL, a package file
    needed_by: str  # the rebar.config or .app that asked for it

    def record(self) -> dict[str, str]:
        return {
            "name": self.name,
            "source": self.source,
            "version": self.version,
            "digest": self.identity,
            "location": self.location,
            "needed_by": self.needed_by,
        }


@dataclass(frozen=True)
class App:
    """One of the project's own applications (or a dependency's), as its .app.src says."""

    name: str
    vsn: str
    src: Path
    needs: tuple[str, ...]


@dataclass
class Facts:
    """What ``project.escript facts`` printed, per file."""

    deps: list[tuple[str, list[str]]] = field(default_factory=list)  # (name, [kind, ...])
    relx_release: tuple[str, str] | None = None
    relx_opts: set[str] = field(default_factory=set)
    locks: dict[str, list[str]] = field(default_factory=dict)
    app: tuple[str, str] | None = None
    needs: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class Resolved:
    """The project as the build sees it: its apps, its release and its dependencies."""

    directory: Path
    apps: dict[str, App]
    relx_release: tuple[str, str] | None  # the project's own (name, vsn spec), if it has one
    relx_opts: frozenset[str]
    dependencies: tuple[Dependency, ...]  # in the order found: level by level, as rebar3 does
    git_vsn: bool  # some app or the release takes its version from git
    dep_needs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # what each dependency's .app needs
    declared: dict[str, tuple[str, ...]] = field(default_factory=dict)  # each dependency's own rebar deps

    def build_order(self) -> list[Dependency]:
        """The dependencies, each after those it declares or its .app needs (as rebar3 compiles them)."""
        by_name = {d.name: d for d in self.dependencies}
        done: list[str] = []

        def visit(name: str, seen: frozenset[str]) -> None:
            if name in done or name not in by_name or name in seen:
                return
            for child in (*self.declared.get(name, ()), *self.dep_needs.get(name, ())):
                visit(child, seen | {name})
            done.append(name)

        for d in self.dependencies:
            visit(d.name, frozenset())
        return [by_name[n] for n in done]

    def by_source(self, source: str) -> list[Dependency]:
        return [d for d in self.dependencies if d.source == source]


def facts(files: list[Path], profile: str = "default") -> list[Facts]:
    """Read each file's facts with the host's escript (one Erlang run for all of them)."""
    if not files:
        return []
    tc = erlang.host_toolchain()
    out = run([tc.escript, PROJECT_SCRIPT, "facts", profile, *files], what="project.escript").stdout
    result = [Facts() for _ in files]
    for line in out.decode(errors="replace").splitlines():
        index, _, rest = line.partition("\t")
        kind, *fields_ = rest.split("\t")
        f = result[int(index)]
        if kind == "dep":
            f.deps.append((fields_[0], fields_[1:]))
        elif kind == "relx_release":
            f.relx_release = (fields_[0], fields_[1])
        elif kind == "relx_opt":
            f.relx_opts.add(fields_[0])
        elif kind == "lock":
            f.locks[fields_[0]] = fields_[1:]
        elif kind == "app":
            f.app = (fields_[0], fields_[1])
        elif kind == "needs":
            f.needs.append(fields_[0])
        elif kind == "error":
            f.error = fields_[0] if fields_ else "unreadable"
    for path, f in zip(files, result, strict=True):
        if f.error:
            raise ConfigError(f"{f.error}", hint=f"fix {path.name}; rebar3 reads it the same way")
    return result


def resolve(directory: Path, profile: str, toolchain: erlang.Toolchain | None = None) -> Resolved:
    """Resolve the rebar3 project in ``directory`` (reads files and local git; fetches nothing)."""
    tc = toolchain or erlang.host_toolchain()
    config = directory / "rebar.config"
    app_srcs = project.project_apps(directory)
    lock = directory / "rebar.lock"
    umbrella_configs = [p.parent.parent / "rebar.config" for p in app_srcs.values()]
    umbrella_configs = [c for c in umbrella_configs if c.is_file() and c != config]
    first = [config, *app_srcs.values(), *umbrella_configs] + ([lock] if lock.is_file() else [])
    got = dict(zip(first, facts(first, profile), strict=True))
    apps = {}
    for name, src in app_srcs.items():
        f = got[src]
        vsn = f.app[1] if f.app else "?"
        apps[name] = App(name, vsn, src, tuple(f.needs))
    root_facts = got[config]
    locks = got[lock].locks if lock.is_file() else {}
    resolver = _Resolver(directory, profile, tc, set(apps), locks)
    queue = [(n, spec, "rebar.config") for n, spec in root_facts.deps]
    for c in umbrella_configs:
        queue += [(n, spec, c.relative_to(directory).as_posix()) for n, spec in got[c].deps]
    resolver.run(queue)
    needs = {n: a.needs for n, a in apps.items()}
    resolver.check_needs(needs)
    git_vsn = any(a.vsn == "git" for a in apps.values()) or (
        root_facts.relx_release is not None and root_facts.relx_release[1] == "git"
    )
    return Resolved(
        directory=directory,
        apps=apps,
        relx_release=root_facts.relx_release,
        relx_opts=frozenset(root_facts.relx_opts),
        dependencies=tuple(resolver.found.values()),
        git_vsn=git_vsn,
        dep_needs=dict(resolver.app_needs),
        declared={k: tuple(v) for k, v in resolver.declared.items()},
    )


class _Resolver:
    def __init__(
        self, directory: Path, profile: str, tc: erlang.Toolchain, own: set[str], locks: dict[str, list[str]]
    ) -> None:
        self.directory = directory
        self.profile = profile
        self.tc = tc
        self.own = own
        self.locks = locks
        self.found: dict[str, Dependency] = {}
        self.app_needs: dict[str, tuple[str, ...]] = {}
        self.declared: dict[str, list[str]] = {}  # dependency -> the dependencies its rebar.config names
        self.otp_apps = otp_applications(tc)

    def run(self, queue: list[tuple[str, list[str], str]]) -> None:
        """Resolve level by level; each level's new rebar.config and .app.src files are read at once."""
        while queue:
            pending: list[tuple[str, Path | None, Path | None]] = []  # (dep, its rebar.config, its .app.src)
            with tempfile.TemporaryDirectory(prefix="deps-") as tmp:
                for name, spec, needed_by in queue:
                    self.declared.setdefault(needed_by, []).append(name)
                    if name in self.found or name in self.own:
                        continue
                    dep, config, app_src = self._one(name, spec, needed_by, Path(tmp))
                    self.found[name] = dep
                    pending.append((name, config, app_src))
                files = list(dict.fromkeys(p for _, c, a in pending for p in (c, a) if p is not None))
                got = dict(zip(files, facts(files, self.profile), strict=True))
                queue = []
                for name, config, app_src in pending:
                    if app_src is not None:
                        f = got[app_src]
                        self.app_needs[name] = tuple(f.needs)
                        if f.app and self.found[name].version == "?":
                            self.found[name] = _with_version(self.found[name], f.app[1])
                    if config is not None:
                        queue += [(n, s, name) for n, s in got[config].deps]

    def _one(
        self, name: str, spec: list[str], needed_by: str, tmp: Path
    ) -> tuple[Dependency, Path | None, Path | None]:
        checkout = self.directory / "_checkouts" / name
        if checkout.is_dir():
            app_src = next(iter(sorted(checkout.glob("src/*.app.src"))), None)
            digest = digest_of(project.tree_digest(checkout))
            config = checkout / "rebar.config"
            dep = Dependency(name, "checkout", "?", digest, f"_checkouts/{name}", needed_by)
            return dep, config if config.is_file() else None, app_src
        locked = self.locks.get(name)
        if locked and locked[0] == "git":
            spec = ["git", locked[1], "ref", locked[2]]
        elif locked and locked[0] == "pkg":
            spec = ["pkg", locked[1], locked[2], locked[3] if len(locked) > 3 else ""]
        kind = spec[0] if spec else "?"
        if kind == "git":
            return self._git(name, spec[1], spec[2], spec[3], needed_by, tmp)
        if kind == "pkg":
            hexed = self._hex(name, spec[1], spec[2], spec[3] if len(spec) > 3 else "", needed_by, tmp)
            if hexed is not None:
                return hexed
            installed = self._installed(name, needed_by)
            if installed is not None:
                return installed, None, None
            where = f"hex {spec[1]} {spec[2]}".strip()
            raise ConfigError(
                f"{needed_by}: dependency {name} ({where}) cannot be resolved offline: not in _checkouts/, "
                f"not in rebar3's hex cache ({hexpkg.cache()}), not installed under {self.tc.root}/lib",
                hint=f"put its sources in _checkouts/{name}, use a local git repository, or install it "
                f"(Debian: erlang-{name.replace('_', '-')})",
            )
        raise ConfigError(
            f"{needed_by}: dependency {name}: {' '.join(spec[1:]) or kind} is not a source the pipeline "
            "can resolve (hex packages, git repositories, _checkouts/)",
            hint=f"put its sources in _checkouts/{name}",
        )

    def _git(
        self, name: str, url: str, ref_kind: str, ref: str, needed_by: str, tmp: Path
    ) -> tuple[Dependency, Path | None, Path | None]:
        repo = local_git_path(url, self.directory)
        if repo is None:
            raise ConfigError(
                f"{needed_by}: dependency {name} is fetched from {url}, which is not a local git "
                "repository; the pipeline does not fetch from the network",
                hint=f"clone it and point the dep at file:///path/to/clone, or put it in _checkouts/{name}",
            )
        rev = {"branch": f"refs/heads/{ref}", "tag": f"refs/tags/{ref}"}.get(ref_kind, ref)
        if ref_kind == "branch" and ref == "HEAD":
            rev = "HEAD"
        sha = _git_out(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        if not sha and ref_kind == "branch":
            sha = _git_out(repo, "rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{ref}^{{commit}}")
        if not sha:
            raise ConfigError(
                f"{needed_by}: dependency {name}: {ref_kind} {ref} is not in the git repository {repo}",
                hint="check the branch, tag or ref in rebar.config (or rebar.lock)",
            )
        out_dir = tmp / name
        out_dir.mkdir()
        config = _git_file(repo, sha, "rebar.config", out_dir / "rebar.config")
        names = _git_out(repo, "ls-tree", "--name-only", sha, "src/").split()
        app_srcs = [n for n in names if n.endswith(".app.src")]
        app_src = _git_file(repo, sha, app_srcs[0], out_dir / Path(app_srcs[0]).name) if app_srcs else None
        dep = Dependency(name, "git", "?", sha, f"{url}#{sha}", needed_by)
        return dep, config, app_src

    def _hex(
        self, name: str, package: str, requirement: str, locked_hash: str, needed_by: str, tmp: Path
    ) -> tuple[Dependency, Path | None, Path | None] | None:
        tar = hexpkg.find(package, requirement)
        if tar is None:
            return None
        version = tar.name.removeprefix(f"{package}-").removesuffix(".tar")
        digest = sha256_file(tar)
        with tarfile.open(tar) as outer:
            inner = hexpkg.member(outer, "CHECKSUM").decode().strip()
            metadata = hexpkg.member(outer, "metadata.config")
        if locked_hash and locked_hash.lower() not in (digest, inner.lower()):
            raise ConfigError(
                f"rebar.lock: dependency {name}: {tar} has checksum {digest}, the lock says {locked_hash}",
                hint="the cached package is not the locked one: remove it from the cache or update the lock",
            )
        out_dir = tmp / name
        out_dir.mkdir()
        meta = out_dir / "metadata.config"  # its requirements are the package's dependencies
        meta.write_bytes(metadata)
        dep = Dependency(name, "hex", version, digest, str(tar), needed_by)
        return dep, meta, meta

    def _installed(self, name: str, needed_by: str) -> Dependency | None:
        lib = installed_lib(self.tc, name)
        if lib is None:
            return None
        vsn = _app_vsn(lib / "ebin" / f"{name}.app")
        digest = digest_of(project.tree_digest(lib))
        return Dependency(name, "installed", vsn, digest, str(lib), needed_by)

    def check_needs(self, needs: dict[str, tuple[str, ...]]) -> None:
        """Every application an app needs is the project's, a dependency, OTP's or installed here."""
        todo = list(needs.items()) + list(self.app_needs.items())
        seen: set[str] = set()
        while todo:
            who, wanted = todo.pop(0)
            for app in wanted:
                if app in seen or app in self.own or app in self.found or app in self.otp_apps:
                    continue
                seen.add(app)
                dep = self._installed(app, f"the .app of {who}")
                if dep is None:
                    raise ConfigError(
                        f"application {app}, which {who} needs (its .app applications), is not the "
                        "project's, not a dependency in rebar.config and not installed under "
                        f"{self.tc.root}/lib",
                        hint=f"add {app} to deps in rebar.config (or _checkouts/{app}), or install the "
                        f"Debian package erlang-{app.replace('_', '-')}",
                    )
                self.found[app] = dep
                todo.append((app, _app_needs(Path(dep.location) / "ebin" / f"{app}.app")))


# -- sources ----------------------------------------------------------------------------------------


def local_git_path(url: str, base: Path) -> Path | None:
    """The local repository a git URL names (``file://``, an absolute or a relative path), else None."""
    if url.startswith("file://"):
        path = Path(url.removeprefix("file://"))
    elif "://" in url or re.match(r"^[\w.-]+@[\w.-]+:", url):
        return None  # https://, ssh://, git@host:... are remote
    else:
        path = (base / url) if not url.startswith("/") else Path(url)
    return path if path.exists() else None


def materialize_git(dep: Dependency, base: Path, dest: Path) -> None:
    """Export the dependency's commit (no .git) into ``dest``."""
    url, _, sha = dep.location.rpartition("#")
    repo = local_git_path(url, base)
    if repo is None:
        raise ConfigError(f"dependency {dep.name}: {url} is no longer a local git repository")
    data = run(["git", "-C", repo, "archive", "--format=tar", sha], what="git archive").stdout
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")


def installed_lib(tc: erlang.Toolchain, name: str) -> Path | None:
    """An application installed under the OTP root: ``lib/NAME-VSN`` or (Debian) ``lib/NAME``."""
    for lib in [*sorted(tc.root.glob(f"lib/{name}-*"), reverse=True), tc.root / "lib" / name]:
        if (lib / "ebin" / f"{name}.app").is_file():
            return lib
    return None


def otp_applications(tc: erlang.Toolchain) -> set[str]:
    """The applications of the OTP release itself (not the libraries other packages installed)."""
    listing = tc.root / "releases" / tc.otp_release / "installed_application_versions"
    if listing.is_file():
        return {line.rsplit("-", 1)[0] for line in listing.read_text().split()}
    return {p.name.rsplit("-", 1)[0] for p in tc.root.glob("lib/*-*")}


# -- helpers ----------------------------------------------------------------------------------------


def _git_out(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)
    return proc.stdout.decode(errors="replace").strip() if proc.returncode == 0 else ""


def _git_file(repo: Path, sha: str, name: str, dest: Path) -> Path | None:
    proc = subprocess.run(["git", "-C", str(repo), "show", f"{sha}:{name}"], capture_output=True, check=False)
    if proc.returncode != 0:
        return None
    dest.write_bytes(proc.stdout)
    return dest


def _app_vsn(app_file: Path) -> str:
    m = re.search(r'\{\s*vsn\s*,\s*"([^"]*)"', app_file.read_text(errors="replace"))
    return m.group(1) if m else "?"


def _app_needs(app_file: Path) -> tuple[str, ...]:
    text = app_file.read_text(errors="replace")
    out: list[str] = []
    for key in ("applications", "included_applications"):
        m = re.search(r"\{\s*" + key + r"\s*,\s*\[([^\]]*)\]", text)
        if m:
            out += re.findall(r"[a-z][a-zA-Z0-9_@]*", m.group(1))
    return tuple(out)


def _with_version(dep: Dependency, vsn: str) -> Dependency:
    return Dependency(dep.name, dep.source, vsn, dep.identity, dep.location, dep.needed_by)


def identities(deps: Iterable[Dependency]) -> list[dict[str, str]]:
    """The dependencies as build inputs (sorted by name)."""
    return [d.record() for d in sorted(deps, key=lambda d: d.name)]
