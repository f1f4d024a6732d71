"""Where the ling target's toolchain runs: this machine, or a build host reached over SSH (Fabric).

Both kinds of host offer the same few operations (run a program, make and remove a private work
directory, copy a directory tree in, copy files out), so the ling target has one code path and the
local tests exercise the same steps a remote build takes.

Remote builds:
- connect with the key in ``ling.key_file`` only (or ssh-agent and the default keys when it is
  empty), with ``ling.connect_timeout_s`` for the TCP connection, the banner and authentication;
- accept the build host only if its key is listed in ``ling.known_hosts`` (``~/.ssh/known_hosts``
  by default); an unknown host is refused with its fingerprint, a changed key as a possible attack;
- run every command under ``timeout`` on the host itself (so a stuck railing is killed there, not
  just abandoned) and stream its output, line by line, with the host as a prefix;
- work in a fresh private directory (random name, mode 700) under ``ling.remote_dir``, removed afterwards,
  whether the build worked or not.
"""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import shutil
import socket
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import paramiko
from fabric import Connection
from invoke.exceptions import CommandTimedOut
from rich.markup import escape

from pipeline import proc, ui
from pipeline.config import LingSettings
from pipeline.errors import ConfigError, PipelineError, ToolFailed, ToolMissing
from pipeline.toolout import LineWriter, crash_report, last_line

log = logging.getLogger(__name__)

SSH_HINT = "check ling.toolchain, ling.key_file and ling.known_hosts in pipeline.toml"
EXIT_NOT_FOUND = 127  # POSIX shells (and coreutils timeout) for "command not found"
EXIT_TIMED_OUT = 124  # coreutils timeout


class Host(Protocol):
    """A machine the toolchain runs on."""

    label: str  # "local" or "ssh://user@host:port", for messages

    def run(
        self, argv: Sequence[str], *, cwd: str | None = None, path: str = "", what: str, quiet: bool = False
    ) -> str:
        """Run ``argv`` (``path`` first on PATH); return stdout. Raise ToolMissing/ToolFailed.

        Output is shown as it comes (remote hosts) unless ``quiet``."""
        ...

    def workdir(self, tag: str) -> str:
        """Make a new private directory for one build step; return its path on the host."""
        ...

    def remove(self, path: str) -> None:
        """Remove a directory made by :meth:`workdir` (and everything in it)."""
        ...

    def upload(self, local_dir: Path, dest: str) -> None:
        """Copy the tree ``local_dir`` to ``dest`` on the host (``dest`` is created)."""
        ...

    def download(self, src: str, local_path: Path) -> None:
        """Copy the file ``src`` on the host to ``local_path``."""
        ...

    def download_tree(self, src: str, local_dir: Path) -> None:
        """Copy the tree ``src`` on the host into ``local_dir`` (created)."""
        ...


# -- this machine ----------------------------------------------------------------------------------


class LocalHost:
    """The toolchain on this machine. Work directories are made under ``base``."""

    label = "local"

    def __init__(self, base: Path, timeout: float) -> None:
        self.base = base
        self.timeout = timeout

    def run(
        self, argv: Sequence[str], *, cwd: str | None = None, path: str = "", what: str, quiet: bool = False
    ) -> str:
        env = {"PATH": os.pathsep.join(p for p in (path, os.environ.get("PATH", "")) if p)}
        try:
            done = proc.run(
                argv, cwd=Path(cwd) if cwd else None, env=env, timeout=self.timeout, what=what, hint=None
            )
        except ToolMissing as err:
            raise ToolMissing(f"{argv[0]}: not found", hint=err.hint) from err
        except PermissionError as err:
            raise ToolMissing(f"{argv[0]}: not executable ({err.strerror})") from err
        except ToolFailed as err:
            crash = crash_report(err.stdout, err.stderr)
            if crash is None:
                raise
            code = err.message.partition(" (exit ")[2].partition(")")[0]
            raise ToolFailed(
                f"{what} failed (exit {code}): {crash}", hint=err.hint, stdout=err.stdout, stderr=err.stderr
            ) from err
        for line in done.stdout.decode(errors="replace").splitlines():
            log.info("%s| %s", what, line)
        return done.stdout.decode(errors="replace")

    def workdir(self, tag: str) -> str:
        self.base.mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(prefix=f"{tag}.", dir=self.base)

    def remove(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def upload(self, local_dir: Path, dest: str) -> None:
        shutil.copytree(local_dir, dest, symlinks=False, dirs_exist_ok=True)

    def download(self, src: str, local_path: Path) -> None:
        local_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, local_path)

    def download_tree(self, src: str, local_dir: Path) -> None:
        shutil.copytree(src, local_dir, dirs_exist_ok=True)


# -- a build host over SSH -------------------------------------------------------------------------


@dataclass(frozen=True)
class SshTarget:
    user: str
    host: str
    port: int

    @property
    def label(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}"


def parse_toolchain(url: str) -> SshTarget:
    """``ssh://user@host[:port]`` -> :class:`SshTarget` (port 22 by default)."""
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.username or not parts.hostname:
        raise ConfigError(
            f'pipeline.toml: ling.toolchain: expected "local" or "ssh://user@host[:port]", got "{url}"'
        )
    return SshTarget(parts.username, parts.hostname, parts.port or 22)


class _UnknownHostKey(paramiko.SSHException):
    pass


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Refuse hosts whose key is not listed, saying which key was offered (to check and add it)."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(f"{key.get_name()} {key.fingerprint}")


class SshHost:
    """The toolchain on a build host, driven with Fabric."""

    def __init__(self, target: SshTarget, settings: LingSettings) -> None:
        self.target = target
        self.label = target.label
        self.settings = settings
        self.base = settings.remote_dir.rstrip("/") or "/"
        key = settings.key_file
        if key and not Path(key).expanduser().is_file():
            raise ConfigError(
                f'pipeline.toml: ling.key_file: "{key}" does not exist',
                hint="point it at the private key the build host accepts, or leave it empty to use ssh-agent",
            )
        known = Path(settings.known_hosts or "~/.ssh/known_hosts").expanduser()
        if settings.known_hosts and not known.is_file():
            raise ConfigError(
                f'pipeline.toml: ling.known_hosts: "{settings.known_hosts}" does not exist',
                hint=f"list the build host's key there: ssh-keyscan -p {target.port} {target.host}",
            )
        t = settings.connect_timeout_s
        connect_kwargs: dict[str, Any] = {"banner_timeout": t, "auth_timeout": t, "channel_timeout": t}
        if key:
            # Only this key: a refused key is then a clear error, not a fall-through to other keys.
            connect_kwargs.update(
                key_filename=[str(Path(key).expanduser())], look_for_keys=False, allow_agent=False
            )
        self.conn = Connection(
            host=target.host,
            user=target.user,
            port=target.port,
            connect_timeout=t,
            connect_kwargs=connect_kwargs,
        )
        self.conn.client.set_missing_host_key_policy(_RefuseUnknown())
        if known.is_file():
            self.conn.client.load_host_keys(str(known))
        self.known_hosts = known

    def open(self) -> None:
        try:
            self.conn.open()
        except Exception as err:
            self.close()
            raise self._connect_error(err) from err
        except BaseException:
            self.close()
            raise
        ui.say(f"ling: connected to build host {self.label}")

    def close(self) -> None:
        self.conn.close()

    def _connect_error(self, err: Exception) -> PipelineError:
        where = f"build host {self.label}"
        t = self.target
        if isinstance(err, _UnknownHostKey):
            return PipelineError(
                f"{where}: host key {err} is not listed in {self.known_hosts}; refusing to connect",
                hint="check the fingerprint, then add it: "
                f"ssh-keyscan -p {t.port} {t.host} >> {self.known_hosts}",
            )
        if isinstance(err, paramiko.BadHostKeyException):
            return PipelineError(
                f"{where}: host key {err.key.get_name()} {err.key.fingerprint} does not match the one in "
                f"{self.known_hosts}; refusing to connect "
                "(the host was reinstalled, or someone is in between)",
                hint=f"if the host really changed, remove its old line from {self.known_hosts}",
            )
        if isinstance(err, paramiko.PasswordRequiredException):
            return PipelineError(
                f'{where}: key file "{self.settings.key_file}" is protected by a passphrase',
                hint='add the key to ssh-agent and set ling.key_file = "" to use the agent',
            )
        if isinstance(err, paramiko.AuthenticationException):
            key = (
                f'key "{self.settings.key_file}"'
                if self.settings.key_file
                else "ssh-agent and the default keys"
            )
            return PipelineError(
                f"{where}: user {t.user} refused ({key} not accepted: {err})",
                hint=f"add the public key to ~{t.user}/.ssh/authorized_keys on the build host, "
                "or fix ling.key_file",
            )
        if isinstance(err, socket.gaierror):
            return PipelineError(
                f"{where}: cannot resolve host name {t.host} ({err.strerror})", hint=SSH_HINT
            )
        if isinstance(err, (TimeoutError, socket.timeout)):
            return PipelineError(
                f"{where}: no answer within {self.settings.connect_timeout_s}s",
                hint=f"check that the host is up and port {t.port} is reachable, "
                "or raise ling.connect_timeout_s",
            )
        if isinstance(err, paramiko.ssh_exception.NoValidConnectionsError):
            reasons = "; ".join(sorted({getattr(e, "strerror", None) or str(e) for e in err.errors.values()}))
            return PipelineError(f"{where}: cannot connect ({reasons})", hint=SSH_HINT)
        if isinstance(err, OSError):
            return PipelineError(f"{where}: cannot connect ({err.strerror or err})", hint=SSH_HINT)
        if isinstance(err, paramiko.SSHException):
            return PipelineError(f"{where}: SSH failed ({err})", hint=SSH_HINT)
        return PipelineError(f"{where}: cannot connect ({type(err).__name__}: {err})", hint=SSH_HINT)

    # -- operations ----------------------------------------------------------------------------------

    def _shell(
        self,
        command: str,
        *,
        what: str,
        stream: bool = False,
        timeout: float | None = None,
        exists: str | None = None,
    ) -> str:
        """Run ``command`` on the host; return its stdout. ``exists``: a shell command that succeeds
        when the program ``command`` runs can be found, to tell "not found" from a program that
        itself exits 127 (an escript that crashed does)."""
        limit = timeout or self.settings.command_timeout_s
        prefix = f"{self.target.host}|"
        out = LineWriter(lambda line: ui.say(f"[dim]{escape(prefix)}[/dim] {escape(line)}"))
        err = LineWriter(lambda line: ui.say(f"[dim]{escape(prefix)}[/dim] {escape(line)}"))
        try:
            result = self.conn.run(
                command,
                hide=not stream,
                warn=True,
                pty=False,
                in_stream=False,
                out_stream=out if stream else None,
                err_stream=err if stream else None,
                timeout=limit + 30,  # the host's own `timeout` fires first; this covers a dead link
            )
        except CommandTimedOut as exc:
            raise ToolFailed(f"{what} on {self.label}: no result within {limit}s", hint=SSH_HINT) from exc
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise PipelineError(f"{what} on {self.label}: connection lost ({exc})", hint=SSH_HINT) from exc
        finally:
            out.flush()
            err.flush()
        if result.exited == 0:
            return str(result.stdout)
        last = (
            crash_report(str(result.stdout), str(result.stderr))
            or last_line(str(result.stderr))
            or last_line(str(result.stdout))
            or "no output"
        )
        if result.exited == EXIT_TIMED_OUT:
            raise ToolFailed(
                f"{what} on {self.label}: timed out after {limit}s", hint="raise ling.command_timeout_s"
            )
        if result.exited == EXIT_NOT_FOUND and not (exists and self._succeeds(exists)):
            raise ToolMissing(f"{what} on {self.label}: not found ({last})")
        raise ToolFailed(
            f"{what} on {self.label} failed (exit {result.exited}): {last}",
            stdout=str(result.stdout),
            stderr=str(result.stderr),
        )

    def _succeeds(self, command: str) -> bool:
        try:
            result = self.conn.run(command, hide=True, warn=True, pty=False, in_stream=False, timeout=60)
        except (CommandTimedOut, OSError, paramiko.SSHException, EOFError):
            return False
        return bool(result.exited == 0)

    def run(
        self, argv: Sequence[str], *, cwd: str | None = None, path: str = "", what: str, quiet: bool = False
    ) -> str:
        parts = []
        if cwd:
            parts.append(f"cd {shlex.quote(cwd)} &&")
        if path:
            parts.append(f'PATH={shlex.quote(path)}:"$PATH"')
        limit = self.settings.command_timeout_s
        where = " ".join(parts)
        # A shell's "command not found" and coreutils timeout's "cannot run" are exit 127, and so is
        # an escript that crashes (railing's does): only a program that cannot be found is missing.
        exists = f"{where} command -v {shlex.quote(argv[0])} >/dev/null".strip()
        return self._shell(
            f"{where} timeout -k 10 {limit} {shlex.join(argv)}".strip(),
            what=what,
            stream=not quiet,
            exists=exists,
        )

    def workdir(self, tag: str) -> str:
        # Made over SFTP (no shell round trip): the base with its missing parents, then a new
        # directory with a random name that only this user can enter.
        sftp = self.conn.sftp()
        try:
            parts = [p for p in self.base.split("/") if p]
            for i in range(1, len(parts) + 1):
                here = "/" + "/".join(parts[:i])
                try:
                    sftp.stat(here)
                except FileNotFoundError:
                    sftp.mkdir(here, mode=0o700)
            for _ in range(5):
                path = f"{self.base}/{tag}.{secrets.token_hex(6)}"
                try:
                    sftp.stat(path)
                except FileNotFoundError:
                    sftp.mkdir(path, mode=0o700)
                    return path
        except OSError as err:
            raise PipelineError(
                f"build host {self.label}: cannot make a work directory under {self.base} ({err})",
                hint="set ling.remote_dir to a directory the build user may write",
            ) from err
        raise PipelineError(f"build host {self.label}: no free work directory name under {self.base}")

    def remove(self, path: str) -> None:
        if not path.startswith(self.base + "/") or "/../" in path:
            raise PipelineError(f"build host {self.label}: refusing to remove {path!r} outside {self.base}")
        self._shell(f"rm -rf -- {shlex.quote(path)}", what="cleanup")

    def upload(self, local_dir: Path, dest: str) -> None:
        # One archive over SFTP and one unpack, instead of a round trip per file. The archive lives
        # inside ``dest`` (itself inside a work directory), so a failed unpack leaves nothing outside.
        sftp = self.conn.sftp()
        try:
            sftp.stat(dest)
        except FileNotFoundError:
            sftp.mkdir(dest, mode=0o700)
        remote_archive = f"{dest}/.upload.tar.gz"
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "upload.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                tar.add(local_dir, arcname=".")
            self.conn.put(str(archive), remote=remote_archive)
        q = shlex.quote
        self._shell(f"tar -xzf {q(remote_archive)} -C {q(dest)} && rm -f {q(remote_archive)}", what="unpack")

    def download(self, src: str, local_path: Path) -> None:
        local_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn.get(src, local=str(local_path))
        except FileNotFoundError as err:
            raise ToolFailed(f"{self.label}: {src} was not made", hint=SSH_HINT) from err

    def download_tree(self, src: str, local_dir: Path) -> None:
        sftp = self.conn.sftp()
        local_dir.mkdir(parents=True, exist_ok=True)
        try:
            entries = sftp.listdir_attr(src)
        except FileNotFoundError as err:
            raise ToolFailed(f"{self.label}: {src} was not made", hint=SSH_HINT) from err
        for entry in entries:
            name = entry.filename
            if name in (".", "..") or "/" in name:
                continue
            mode = entry.st_mode or 0
            if stat.S_ISDIR(mode):
                self.download_tree(f"{src}/{name}", local_dir / name)
            elif stat.S_ISREG(mode):
                sftp.get(f"{src}/{name}", str(local_dir / name))


# -- choosing ---------------------------------------------------------------------------------------


@contextmanager
def open_host(settings: LingSettings, local_base: Path) -> Iterator[Host]:
    """The host ``settings.toolchain`` names, connected; closed again on exit."""
    if settings.toolchain == "local":
        yield LocalHost(local_base, settings.command_timeout_s)
        return
    host = SshHost(parse_toolchain(settings.toolchain), settings)
    host.open()
    try:
        yield host
    finally:
        host.close()


@contextmanager
def workdir(host: Host, tag: str) -> Iterator[str]:
    """A private work directory on ``host`` that is removed afterwards, also after a failure."""
    path = host.workdir(tag)
    try:
        yield path
    finally:
        try:
            host.remove(path)
        except PipelineError as err:  # keep the original error; say what could not be cleaned
            ui.warn(f"could not remove {path} on {host.label}: {err}")
