"""The local cloud: the instances of the local AWS's Auto Scaling groups run as QEMU VMs on this machine,
with real target health and a local load balancer in front of them.

It lives inside the process that serves the local AWS (``pipeline.local.moto_app``), as threads beside
the server. That is where it can see every change the moment it is made (a hook after each request
that changed something), read moto's state between two requests, and make ``DescribeTargetHealth``
report what the health checks see (moto's own target health is always ``healthy``; its models can only
be changed from inside the process). Its life is the server's: ``invoke local.down`` stops the VMs,
the load balancer and the server together, and a VM cannot outlive the process (QEMU gets SIGKILL
when the thread that started it ends).

What it does, for every running instance of an Auto Scaling group whose image the pipeline made (the
image's ``ManagedBy`` tag):

1. **Disk.** The image's snapshot (its ``SnapshotId`` tag) is read back through the EBS direct APIs
   of the local AWS and assembled into a raw disk, checked against the image's ``ImageSha256``
   (:mod:`pipeline.local.disks`; once per snapshot, cached).
2. **Boot.** ``local.boot = "uefi"``: the disk itself through OVMF, on NVMe as on Nitro (a
   copy-on-write overlay; the cached disk is never written). ``"direct"``: the kernel, initramfs and
   command line taken out of the disk's unified kernel image, booted directly (faster; still the
   uploaded bytes). Each VM gets a new sparse scratch disk of the launch template's volume size,
   deleted with the instance, and a free host port forwarded to its target group's port. Before a VM
   starts, :func:`pipeline.local.memory.check_room` must agree that it fits.
3. **Health.** The target group's health check runs against the VM (:mod:`pipeline.local.balancer`),
   and ``DescribeTargetHealth`` reports its state: ``initial`` while the disk is assembled and the VM
   boots, then ``healthy`` or ``unhealthy``, ``draining`` once the instance is terminated. An
   instance that cannot run (its image's disk cannot be read, say) is ``unhealthy`` with the reason
   in the description, and ``GetConsoleOutput`` gives it too (for a running VM: its serial console).
4. **Traffic.** The load balancer serves the HTTP listeners of the local AWS on 127.0.0.1.
5. **End.** An instance that is terminated (scale-in, a replaced group, a deleted stack) drains: no
   new requests, those in flight finish (up to the target group's deregistration delay); then its VM
   is shut down (ACPI power button, so the app stops cleanly) and its scratch disk deleted.

The server's ``/_pipeline/cloud`` answers with the state of all this (GET, for ``invoke local.status``)
and takes the cloud's settings (POST; from ``local.*`` in pipeline.toml, sent by every task).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.aws import tags as T
from pipeline.aws.session import Clients
from pipeline.errors import ImageError, PipelineError
from pipeline.local import cloud_api as api
from pipeline.local import console, memory, world
from pipeline.local.balancer import Balancer
from pipeline.local.control import CloudConfig
from pipeline.local.disks import DiskCache
from pipeline.local.qemu import Vm, VmSpec, make_scratch
from pipeline.local.registry import HealthCheck, Machine, Registry

log = logging.getLogger(__name__)

SYNC_INTERVAL = 2.0  # seconds between two looks at the local AWS when nothing told the cloud to look
STOP_GRACE = 20.0  # seconds a guest gets to shut down after the power button before QEMU is ended
KEEP_LOGS = 30  # console logs of ended instances kept (the newest)
StartResponse = Callable[..., Any]


@dataclass
class _Started:
    vm: Vm
    machine_dir: Path


class LocalCloud:
    """The instance runner, target health and load balancer of one local AWS process."""

    def __init__(
        self,
        state_dir: Path,
        endpoint: str,
        lock: threading.Lock,
        account_id: str,
        config: CloudConfig,
        available_mb: Callable[[], int] = memory.available_mb,
    ) -> None:
        self.dir = state_dir / "cloud"
        self.endpoint = endpoint
        self.lock = lock  # the server's request lock: held while moto's state is read
        self.account_id = account_id
        self.config = config
        self.available_mb = available_mb
        self.registry = Registry()
        self.balancer = Balancer(self.registry, on_health=self._health_changed)
        self.cache = DiskCache(self.dir / "disks")
        self.vms: dict[str, _Started] = {}  # instance id -> its VM (touched by the sync thread, and
        self._vms_lock = threading.Lock()  # by the stop threads under this lock)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._ready: queue.Queue[tuple[str, VmSpec, Path]] = queue.Queue()
        self._prepare = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cloud-prepare")
        self._stopper = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cloud-stop")
        self._thread = threading.Thread(target=self._sync_loop, name="cloud-sync", daemon=True)
        self._clients = Clients(region="us-east-1", endpoint_url=endpoint)
        self._clients_lock = threading.Lock()
        self._routes: Any = None  # the (listeners, members) last given to the balancer
        self.started_at = time.time()

    # -- life cycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the balancer and the sync thread (after the server listens: disks are read through it)."""
        for leftover in ("vms",):  # VMs of an earlier server process died with it; so did their disks
            shutil.rmtree(self.dir / leftover, ignore_errors=True)
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        api.activate(self.registry, lambda: self.config.run_instances)
        console.install(self.console_log, self.cannot_run)
        self.balancer.start()
        self._thread.start()
        log.info("local cloud started (%s)", self.config.to_json())

    def stop(self) -> None:
        """Stop taking requests, shut every VM down (in parallel), stop the threads."""
        self._stopping.set()
        self._wake.set()
        self.balancer.stop(grace=5.0)
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_GRACE + 30)
        self._prepare.shutdown(wait=False, cancel_futures=True)
        self._stopper.shutdown(wait=True)
        api.deactivate(self.registry)
        console.uninstall()
        log.info("local cloud stopped")

    def poke(self) -> None:
        """Look at the local AWS again now (something changed)."""
        self._wake.set()

    def after_change(self, environ: dict[str, Any]) -> None:
        """Called by the server after a request that changed something, with the request lock held:
        the load balancer follows the new rules and members before the caller gets its answer."""
        if str(environ.get("PATH_INFO", "")).startswith("/snapshots"):
            return  # EBS direct: blocks of a snapshot change nothing the cloud serves
        try:
            self._configure_balancer(world.read(self.account_id))
        except Exception:
            log.exception("local cloud: reading the local AWS after a change failed")
        self.poke()

    # -- the control endpoint ----------------------------------------------------------------------------

    def handle(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        """``GET /_pipeline/cloud``: the cloud's state; ``POST /_pipeline/cloud``: new settings."""
        if environ.get("REQUEST_METHOD") == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length).decode() if length else ""
            try:
                config = CloudConfig.from_json(body)
            except (ValueError, TypeError) as err:
                start_response("400 Bad Request", [("Content-Type", "text/plain")])
                return [f"bad cloud settings: {err}".encode()]
            if config != self.config:
                log.info("local cloud settings: %s", config.to_json())
                self.config = config
                self.poke()
        data = json.dumps(self.status()).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [data]

    def status(self) -> dict[str, Any]:
        machines = self.registry.records()
        running = [m for m in machines if m["pid"] and m["phase"] in ("running", "draining")]
        try:
            available = self.available_mb()
        except (OSError, PipelineError):
            available = 0
        return {
            "config": asdict(self.config),
            "machines": machines,
            "listeners": self.balancer.status(),
            "memory": {
                "available_mb": available,
                "margin_mb": memory.MARGIN_MB,
                "overhead_mb": memory.QEMU_OVERHEAD_MB,
                "running": [
                    {"memory_mb": m["memory_mb"], "rss_mb": memory.rss_mb(m["pid"])} for m in running
                ],
            },
            "disks_assembled": self.cache.assembled,
            "requests": dict(self.balancer.stats),
        }

    # -- the sync loop (one thread: it starts every VM, so QEMU's parent-death signal is tied to it) ---

    def _sync_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(SYNC_INTERVAL)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                with self.lock:
                    seen = world.read(self.account_id)
                self._reconcile(seen)
                self._start_ready()
                self._check_exited()
            except Exception:
                log.exception("local cloud: sync failed")
        self._shutdown()

    def _reconcile(self, seen: world.World) -> None:
        self._configure_balancer(seen)
        wanted = {
            i.instance_id: i
            for i in seen.instances.values()
            if i.state == "running" and self.config.run_instances
        }
        known = self.registry.ids()
        for instance_id in sorted(set(wanted) - known):
            self._admit(wanted[instance_id], seen)
        for instance_id in sorted(known - set(wanted)):
            machine = self.registry.get(instance_id)
            if machine is not None and machine.phase not in ("draining", "stopped"):
                delay = min(
                    (
                        seen.target_groups[a].deregistration_delay
                        for a in machine.target_groups
                        if a in seen.target_groups
                    ),
                    default=0.0,
                )
                self._retire(instance_id, delay)
        self.cache.prune(seen.snapshots)  # the disks of snapshots that were deleted

    def _configure_balancer(self, seen: world.World) -> None:
        listeners = seen.listeners if self.config.run_instances else ()
        routes = (listeners, seen.members())
        if routes != self._routes:
            self.balancer.configure(*routes)
            self._routes = routes

    def _admit(self, view: world.InstanceView, seen: world.World) -> None:
        group = next((seen.target_groups[a] for a in view.target_groups if a in seen.target_groups), None)
        check = group.check if group is not None else HealthCheck()
        machine = Machine(
            instance_id=view.instance_id,
            region=view.region,
            group=view.group,
            color=view.tags.get(T.COLOR, ""),
            build_id=view.tags.get(T.BUILD_ID, ""),
            image_id=view.image_id,
            check=check,
            target_groups=view.target_groups,
            memory_mb=self.config.vm_memory_mb,
            boot=self.config.boot,
        )
        self.registry.add(machine)
        image_tags = seen.images.get(view.image_id, {})
        traffic_port = group.port if group is not None else check.port
        if not T.managed(image_tags):
            self._fail(
                view.instance_id, f"image {view.image_id} was not made by the pipeline: not run locally"
            )
            return
        log.info("instance %s (%s %s): preparing its disk", view.instance_id, machine.color, machine.build_id)
        self._prepare.submit(self._prepare_vm, machine, view, dict(image_tags), traffic_port)

    def _prepare_vm(
        self, machine: Machine, view: world.InstanceView, image_tags: dict[str, str], port: int
    ) -> None:
        """In a prepare thread: the disk (and boot files), the scratch disk, the VM's spec."""
        try:
            snapshot = image_tags.get(T.SNAPSHOT, "")
            if not snapshot:
                raise ImageError(
                    f"image {view.image_id} has no {T.SNAPSHOT} tag: it was not uploaded by invoke ami"
                )
            with self._clients_lock:
                ebs = self._clients.ebs(view.region)
            disk = self.cache.get(ebs, snapshot, image_tags.get(T.IMAGE_SHA256, ""))
            machine_dir = self.dir / "vms" / view.instance_id
            machine_dir.mkdir(parents=True, exist_ok=True)
            scratch = make_scratch(machine_dir / "scratch.img", view.scratch_gib)
            common: dict[str, Any] = {
                "name": view.instance_id,
                "console_log": machine_dir / "console.log",
                "scratch": scratch,
                "forwards": {port: 0, **({machine.check.port: 0} if machine.check.port != port else {})},
                "memory_mb": machine.memory_mb,
            }
            if machine.boot == "direct":
                boot = self.cache.boot_files(snapshot)
                spec = VmSpec(kernel=boot.kernel, initrd=boot.initrd, cmdline=boot.cmdline, **common)
            else:
                spec = VmSpec(disk=disk, disk_bus="nvme", **common)
            self._ready.put((view.instance_id, spec, machine_dir))
            self.poke()
        except Exception as err:
            log.warning("instance %s cannot run: %s", view.instance_id, err)
            self._fail(view.instance_id, _one_line(err))

    def _start_ready(self) -> None:
        while True:
            try:
                instance_id, spec, machine_dir = self._ready.get_nowait()
            except queue.Empty:
                return
            machine = self.registry.get(instance_id)
            if machine is None or machine.phase != "preparing":
                shutil.rmtree(machine_dir, ignore_errors=True)
                continue
            try:
                memory.check_room(
                    1, spec.memory_mb, self.available_mb(), self._running_memory(), what="local cloud"
                )
                vm = Vm(spec)
                vm.start()
            except Exception as err:
                log.warning("instance %s: the VM did not start: %s", instance_id, err)
                shutil.rmtree(machine_dir / "scratch.img", ignore_errors=True)
                self._fail(instance_id, _one_line(err))
                continue
            with self._vms_lock:
                self.vms[instance_id] = _Started(vm, machine_dir)
            port = next(iter(vm.ports.values()))
            probe_port = vm.ports.get(machine.check.port, port)

            def running(m: Machine, vm: Vm = vm, port: int = port) -> None:
                m.phase, m.host_port, m.started = "running", port, time.time()
                m.pid = vm.proc.pid if vm.proc else None
                m.console_log = vm.spec.console_log

            self.registry.update(instance_id, running)
            self.balancer.watch(instance_id, probe_port, machine.check)
            log.info("instance %s: VM started (%s boot), app on 127.0.0.1:%d", instance_id, spec.mode, port)

    def _check_exited(self) -> None:
        with self._vms_lock:
            started = list(self.vms.items())
        for instance_id, item in started:
            machine = self.registry.get(instance_id)
            if machine is not None and machine.phase == "running" and not item.vm.running():
                self.balancer.unwatch(instance_id)
                self._fail(instance_id, f"the VM stopped by itself (see {item.vm.spec.console_log})")

    def _fail(self, instance_id: str, why: str) -> None:
        def failed(m: Machine) -> None:
            m.phase, m.error = "failed", why
            m.health.fail(why)

        self.registry.update(instance_id, failed)

    # -- ending instances ---------------------------------------------------------------------------------

    def _retire(self, instance_id: str, delay: float) -> None:
        """The instance is gone from its group: drain it, then stop its VM and delete its scratch disk."""
        if not self.registry.drain(instance_id):
            return
        log.info("instance %s terminated: draining (up to %.0fs), then stopping its VM", instance_id, delay)
        self._stopper.submit(self._stop_machine, instance_id, delay)

    def _stop_machine(self, instance_id: str, delay: float, grace: float = STOP_GRACE) -> None:
        try:
            if not self.registry.wait_idle(instance_id, delay):
                log.warning(
                    "instance %s: requests still in flight after %.0fs; stopping anyway", instance_id, delay
                )
            self.balancer.unwatch(instance_id)
            with self._vms_lock:
                item = self.vms.pop(instance_id, None)
            if item is not None:
                machine = self.registry.get(instance_id)
                # A guest that never answered runs no app to stop cleanly (and may ignore the button).
                answered = machine is not None and machine.health.answered
                item.vm.stop(grace=grace if answered else 0)
                self._keep_log(instance_id, item.machine_dir)
                shutil.rmtree(item.machine_dir, ignore_errors=True)
            else:
                shutil.rmtree(self.dir / "vms" / instance_id, ignore_errors=True)
            log.info("instance %s: VM stopped, scratch disk deleted", instance_id)
        except Exception:
            log.exception("instance %s: stopping its VM failed", instance_id)
        finally:
            self.registry.remove(instance_id)

    def cannot_run(self, instance_id: str) -> str | None:
        """Why ``instance_id`` cannot run at all (its image's disk cannot be read, ...), if it cannot."""
        machine = self.registry.get(instance_id)
        return machine.error if machine is not None and machine.error else None

    def console_log(self, instance_id: str) -> Path | None:
        """Where the serial console of ``instance_id``'s VM is (kept for a while after it ended)."""
        machine = self.registry.get(instance_id)
        if machine is not None and machine.console_log is not None and machine.console_log.is_file():
            return machine.console_log
        kept = self.dir / "logs" / f"{instance_id}.log"
        return kept if kept.is_file() else None

    def _keep_log(self, instance_id: str, machine_dir: Path) -> None:
        logs = self.dir / "logs"
        with contextlib.suppress(OSError):
            shutil.move(machine_dir / "console.log", logs / f"{instance_id}.log")
            for old in sorted(logs.glob("*.log"), key=lambda p: p.stat().st_mtime)[:-KEEP_LOGS]:
                old.unlink(missing_ok=True)

    def _shutdown(self) -> None:
        """All VMs down, in parallel (the server is stopping)."""
        ids = sorted(self.registry.ids())
        for instance_id in ids:
            self.registry.drain(instance_id)
        futures = [self._stopper.submit(self._stop_machine, i, 0.0) for i in ids]
        for future in futures:
            with contextlib.suppress(Exception):
                future.result(timeout=STOP_GRACE + 15)

    # -- helpers --------------------------------------------------------------------------------------------

    def _running_memory(self) -> list[memory.Running]:
        with self._vms_lock:
            started = [(i.vm.spec.memory_mb, i.vm.proc.pid if i.vm.proc else 0) for i in self.vms.values()]
        return [memory.Running(mb, memory.rss_mb(pid)) for mb, pid in started if pid]

    def _health_changed(self, instance_id: str) -> None:
        machine = self.registry.get(instance_id)
        if machine is None:
            return
        if machine.health.state == "healthy" and machine.healthy_at is None:
            self.registry.update(instance_id, lambda m: setattr(m, "healthy_at", time.time()))
        log.info("instance %s: %s %s", instance_id, machine.health.state, " ".join(machine.health.describe()))


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
