"""The demo's main job through the device plugin, with an in-repo fake kubelet.

``run_device_plugin_flow`` plays every part a node plays for a pod that asks for
``quantum.example.com/qpu: 1``: the device plugin (in this process, the same ``DevicePlugin`` that
``qpu-k8s device-plugin`` runs), the kubelet (the fake: registration server, ListAndWatch
consumer, Allocate caller, PodResources endpoint), and the pod (the example script in a
child process whose environment is exactly what Allocate returned). Each lifecycle step is
printed to ``out``; credentials are never printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from qpu_k8s.core.model import load_backend_config
from qpu_k8s.core.vendors import ResourceType
from qpu_k8s.deviceplugin.agent import DevicePlugin, DevicePluginConfig
from qpu_k8s.deviceplugin.state import AcqState
from qpu_k8s.fakekubelet import FakeDevicePluginKubelet, FakePodResourcesServer, PodAllocation

if TYPE_CHECKING:
    from qpu_k8s.emulator import Emulator

RESOURCE = "quantum.example.com/qpu"
POD_NAMESPACE = "demo"
POD_NAME = "bell-job"
CONTAINER = "main"


class FlowError(RuntimeError):
    """A step of the flow did not happen in time; the message says which."""


@dataclass
class FlowResult:
    """What happened, for callers and tests (no credential values in here)."""

    endpoint: str = ""
    devices: list[tuple[str, str]] = field(default_factory=list)
    device: str = ""
    resource_id: str = ""
    token: str = ""
    public_env: dict[str, str] = field(default_factory=dict)
    secret_names: list[str] = field(default_factory=list)
    allocate_seconds: float = 0.0
    script_returncode: int | None = None
    script_stdout: str = ""
    session_closed_by: str | None = None
    released: bool = False


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise FlowError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def _write_credentials(emulator: Emulator, config_path: Path, creds_dir: Path) -> None:
    """Mount the emulator's (fake) credentials as Secret volumes, one per referenced Secret."""
    for backend in load_backend_config(config_path).backends:
        ref = backend.spec.credentials_secret_ref
        if ref is None:
            continue
        rtype = backend.spec.type
        if rtype is ResourceType.PASQAL_CLOUD:
            data = emulator.pasqal_credentials()
        else:
            data = emulator.ibm_credentials(rtype.value)
        folder = creds_dir / ref.name
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for key, value in data.items():
            path = folder / key
            path.write_text(value)
            path.chmod(0o600)


def run_device_plugin_flow(
    emulator: Emulator,
    backends_config: Path,
    workdir: Path,
    script: Path | Sequence[str],
    out: TextIO,
    *,
    backend: str | None = None,
    timeout: float = 300.0,
) -> FlowResult:
    """Register the device plugin, schedule one pod on one QPU lane, run it, end it.

    ``backends_config`` is the node config file (the operator's ConfigMap format); each
    backend's ``credentialsSecretRef`` is filled with the emulator's credentials under
    ``workdir/credentials``. ``script`` is a Python file (run with this interpreter) or a
    full argv. ``backend`` picks the backend whose lane the pod gets (default: the first
    device the plugin prefers). ``workdir`` must be short: unix socket paths are limited
    to 107 bytes. Raises :class:`FlowError` when a step does not happen in time.
    """
    result = FlowResult()
    workdir = Path(workdir).absolute()
    dp_dir, creds_dir = workdir / "device-plugins", workdir / "credentials"
    dp_dir.mkdir(parents=True, exist_ok=True)
    _write_credentials(emulator, Path(backends_config), creds_dir)

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    say(f"[device plugin] emulator (vendor APIs) at {emulator.url}")
    with (
        FakeDevicePluginKubelet(dp_dir) as kubelet,
        FakePodResourcesServer(workdir / "pod-resources.sock") as pod_resources,
    ):
        say(f"[kubelet] fake kubelet serving {kubelet.socket_path}")
        agent = DevicePlugin(
            DevicePluginConfig(
                device_plugin_dir=dp_dir,
                pod_resources_socket=workdir / "pod-resources.sock",
                state_dir=workdir / "state",
                config=Path(backends_config),
                credentials_dir=creds_dir,
                reconcile_interval=0.2,
                release_grace=0.5,
                restart_hold=2.0,
            )
        )
        agent.start()
        try:
            reg = kubelet.wait_for_registration(timeout=30)
            result.endpoint = reg.endpoint
            say(
                f"[device plugin] registered {reg.resource_name} with the kubelet "
                f"(version {reg.version}, endpoint {reg.endpoint}, preferred allocation "
                f"{'on' if reg.options.get_preferred_allocation_available else 'off'}, "
                f"pre-start {'on' if reg.options.pre_start_required else 'off'})"
            )
            # Wait for a healthy lane of the backend the demo will use, not of any backend:
            # the probes of the two backends finish in either order.
            prefix = f"{backend}-lane-" if backend is not None else ""
            devices = kubelet.wait_for_devices(
                RESOURCE,
                lambda ds: any(d.healthy and d.id.startswith(prefix) for d in ds),
                timeout=60,
            )
            result.devices = [(d.id, d.health) for d in devices]
            say("[device plugin] ListAndWatch advertises one device per lane:")
            for dev_id, health in result.devices:
                say(f"    {dev_id:<28} {health}")

            healthy = [d.id for d in devices if d.healthy]
            if backend is not None:
                healthy = [d for d in healthy if d.startswith(f"{backend}-lane-")]
                if not healthy:
                    raise FlowError(f"backend {backend!r} has no healthy lane to allocate")
            (device,) = kubelet.get_preferred_allocation(RESOURCE, healthy, 1)
            result.device = device
            say(
                f"[kubelet] pod {POD_NAMESPACE}/{POD_NAME} requests {RESOURCE}: 1 → "
                f"GetPreferredAllocation picked {device}"
            )
            started = time.perf_counter()
            response = kubelet.allocate(RESOURCE, [[device]])
            result.allocate_seconds = time.perf_counter() - started
            env = dict(response.container_responses[0].envs)
            (acq,) = [a for a in agent.ledger.live() if device in a.devices]
            creds = agent.registry.credentials_for(acq.backend)
            secret_names = {f"{acq.resource_id}_{k}" for k in creds} | {
                k for k in creds if not k.startswith("QRMI_")
            }
            result.resource_id = acq.resource_id
            result.token = acq.token or ""
            result.secret_names = sorted(secret_names)
            result.public_env = {k: v for k, v in env.items() if k not in secret_names}
            say(
                f"[device plugin] Allocate → QRMI acquire of {acq.backend} "
                f"({acq.resource_id}): acquisition token {result.token} "
                f"in {result.allocate_seconds * 1e3:.0f} ms"
            )
            session = emulator.state.session(result.token)
            if session is not None:
                say(
                    f"[emulator] session {session.id} is {session.state.value} on {session.backend}"
                )
            say("[device plugin] env contract returned to the kubelet (container env):")
            for key in sorted(env):
                shown = "<credential, from the mounted Secret>" if key in secret_names else env[key]
                say(f"    {key}={shown}")

            pod_resources.set_pods(
                [PodAllocation.with_devices(POD_NAME, POD_NAMESPACE, RESOURCE, [device], CONTAINER)]
            )
            _wait(
                lambda: (a := agent.ledger.get(acq.id)) is not None and a.state is AcqState.BOUND,
                30,
                "the acquisition to be bound to the pod",
            )
            say(
                f"[device plugin] PodResources lists {POD_NAMESPACE}/{POD_NAME}/{CONTAINER} "
                f"holding {device}: acquisition bound to the container"
            )

            argv = [sys.executable, str(script)] if isinstance(script, Path) else list(script)
            say(f"[pod] running {' '.join(Path(a).name if '/' in a else a for a in argv)}")
            pod_env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("QRMI_", "SLURM_JOB_QPU")) and "_QRMI_" not in k
            }
            proc = subprocess.run(
                argv,
                env={**pod_env, **env},
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            result.script_returncode = proc.returncode
            result.script_stdout = proc.stdout
            for line in proc.stdout.strip().splitlines()[-5:]:
                say(f"[pod] {line}")
            if proc.returncode != 0:
                tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
                say(f"[pod] exited with {proc.returncode}:\n{tail}")

            pod_resources.set_pods([])
            say(f"[kubelet] pod {POD_NAMESPACE}/{POD_NAME} ended: PodResources no longer lists it")
            _wait(
                lambda: (
                    (a := agent.ledger.get(acq.id)) is not None and a.state is AcqState.RELEASED
                ),
                60,
                "the acquisition to be released",
            )
            result.released = True
            done = emulator.state.session(result.token)
            result.session_closed_by = done.closed_by if done else None
            say(
                f"[device plugin] released acquisition {result.token} "
                f"({(agent.ledger.get(acq.id) or acq).release_reason})"
            )
            if done is not None:
                say(
                    f"[emulator] session {done.id} is {done.state.value}"
                    + (f" (closed by {done.closed_by})" if done.closed_by else "")
                )
        finally:
            agent.stop()
    return result
