"""The emulator as the tests use it: the credentials it accepts, backends on it, what its
sessions saw, and clients and circuits for the emulator's own tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qpu_k8s.emulator import Emulator, SessionRecord, running_emulator
from testsupport.names import NODE_LABEL

# -- credentials -----------------------------------------------------------------------------
# Distinctive values, so a scan of logs, metrics and files finds any copy of them. IBM_KEY
# sorts before USER_KEY: it is the emulator's ``first_api_key``, what ``ibm_credentials()``
# hands out.
IBM_KEY = "qpu-k8s-test-ibm-apikey-6c1f0e9d"  # the backends' own key
USER_KEY = "qpu-k8s-test-user-apikey-93e5aa70"  # a user's own key, from a claim's Secret
PASQAL_TOKEN = "qpu-k8s-test-pasqal-token-4b7a2d11"
SECRETS = (IBM_KEY, PASQAL_TOKEN, USER_KEY)
SECRET_FILES = {
    "ibm-creds": {"QRMI_IBM_QCS_IAM_APIKEY": IBM_KEY},
    "pasqal-creds": {"QRMI_PASQAL_CLOUD_AUTH_TOKEN": PASQAL_TOKEN},
}


@contextmanager
def agents_emulator() -> Iterator[Emulator]:
    """The emulator the node agents' tests share: ideal simulation (fast), these keys."""
    with running_emulator(
        api_keys=frozenset({IBM_KEY, USER_KEY}),
        pasqal_tokens=frozenset({PASQAL_TOKEN}),
        noise=False,
    ) as emu:
        assert emu.config.first_api_key == IBM_KEY
        yield emu


def write_secret(folder: Path, name: str, data: Mapping[str, str]) -> None:
    """A Secret volume as the kubelet mounts it: ``<folder>/<name>/<KEY>`` files."""
    (folder / name).mkdir(parents=True, exist_ok=True)
    for key, value in data.items():
        (folder / name / key).write_text(value)


def write_backend_secrets(folder: Path) -> None:
    """``ibm-creds`` and ``pasqal-creds``, the Secrets the test backends name."""
    for name, data in SECRET_FILES.items():
        write_secret(folder, name, data)


# -- backends on the emulator ------------------------------------------------------------------
def ibm_backend(
    emu: Emulator,
    name: str,
    resource_id: str,
    lanes: int = 1,
    *,
    node: str | None = None,
    max_ttl: int | None = None,
    secret_name: str = "ibm-creds",  # noqa: S107 - a Secret name, not a value
    **spec: Any,
) -> dict[str, Any]:
    """An IBM backend served by ``emu`` (a QuantumBackend's name and spec); node-bound to
    ``node`` (by :data:`NODE_LABEL`) when given; ``spec`` adds or overrides fields."""
    config = emu.ibm_config(resource_id)
    if max_ttl is not None:
        config["QRMI_IBM_QCS_SESSION_MAX_TTL"] = str(max_ttl)
    body: dict[str, Any] = {
        "resourceId": resource_id,
        "type": "ibm-quantum-compute-service",
        "config": config,
        "credentialsSecretRef": {"name": secret_name},
        "lanes": lanes,
    }
    if node is not None:
        body |= {"access": "node-bound", "nodeSelector": {NODE_LABEL: node}}
    return {"name": name, "spec": body | spec}


def pasqal_backend(
    emu: Emulator, name: str, device: str, lanes: int = 1, *, node: str | None = None, **spec: Any
) -> dict[str, Any]:
    """A Pasqal device served by ``emu``, like :func:`ibm_backend`."""
    body: dict[str, Any] = {
        "resourceId": device,
        "type": "pasqal-cloud",
        "config": emu.pasqal_config(device),
        "credentialsSecretRef": {"name": "pasqal-creds"},
        "lanes": lanes,
    }
    if node is not None:
        body |= {"access": "node-bound", "nodeSelector": {NODE_LABEL: node}}
    return {"name": name, "spec": body | spec}


# -- what the emulator saw -----------------------------------------------------------------------
def session_of(emu: Emulator, token: str) -> SessionRecord:
    rec = emu.state.session(token)
    assert rec is not None, f"the emulator has no session {token}"
    return rec


def open_tokens(emu: Emulator) -> set[str]:
    return {s.id for s in emu.state.open_sessions()}


def release_requests(emu: Emulator, token: str) -> int:
    """Answered requests that close a session (qrmi's release: PATCH, or DELETE .../close)."""
    return sum(
        1
        for r in emu.state.requests(path_contains=f"/sessions/{token}")
        if r.method in ("PATCH", "DELETE") and r.status < 400
    )


# -- clients and circuits for the emulator's own tests ---------------------------------------------
def qrmi_resource(
    emu: Emulator, name: str, resource_type: str | None = None, **overrides: str
) -> Any:
    """A real ``qrmi.QuantumResource`` pointed at the emulator via ``from_config``."""
    import qrmi as qrmi_module

    qrmi: Any = qrmi_module  # re-exported from a Rust core that type checkers cannot see

    from qpu_k8s.emulator import catalog

    rtype = resource_type or catalog.get(name).default_resource_type
    types = {
        "ibm-quantum-compute-service": qrmi.ResourceType.IBMQuantumComputeService,
        "qiskit-runtime-service": qrmi.ResourceType.IBMQiskitRuntimeService,
        "pasqal-cloud": qrmi.ResourceType.PasqalCloud,
    }
    config = {**emu.qrmi_config(name, rtype), **overrides}
    return qrmi.QuantumResource.from_config(name, types[rtype], config)


def pasqal_cloud_client(emu: Emulator) -> Any:
    """The ``pasqal-cloud`` SDK's client on the emulator, with its static token."""
    from pasqal_cloud.authentication import TokenProvider
    from pasqal_cloud.endpoints import Endpoints
    from pasqal_cloud.pasqal_cloud_client import PasqalCloudClient

    token = emu.pasqal_credentials()["QRMI_PASQAL_CLOUD_AUTH_TOKEN"]

    class StaticToken(TokenProvider):
        def get_token(self) -> str:
            return token

    return PasqalCloudClient(
        project_id="emulator-project",
        token_provider=StaticToken(),
        endpoints=Endpoints(**emu.pasqal_endpoints()),
    )


def bell_isa(backend: Any, measure: bool = True, optimization_level: int = 1) -> Any:
    """A Bell-pair circuit transpiled for ``backend`` (an ISA circuit).

    Level 1 keeps the trivial layout (qubits 0 and 1); levels 2-3 pick a well-calibrated
    pair, as a user would for a 133-qubit device whose qubit 0 reads out 17 % wrong.
    """
    from qiskit import QuantumCircuit
    from qiskit.transpiler import generate_preset_pass_manager

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    if measure:
        qc.measure_all()
    pm = generate_preset_pass_manager(
        optimization_level=optimization_level, backend=backend, seed_transpiler=1
    )
    return pm.run(qc)


class Call:
    """Runs a (possibly hanging) blocking call in a daemon thread, like the lead's adapter.

    A daemon thread because a qrmi call stuck on a silent server never returns and would
    otherwise keep the interpreter from exiting.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                self.result = fn()
            except BaseException as exc:
                self.error = exc
            finally:
                self.done.set()

        threading.Thread(target=run, daemon=True).start()

    def wait(self, timeout: float) -> bool:
        return self.done.wait(timeout)


def long_job_circuit(num_qubits: int = 11, reps: int = 60) -> Any:
    """A bound, transpiled su2 circuit for fake_torino whose exact noisy simulation takes
    minutes (density matrix of ``num_qubits`` qubits, thousands of gates): a job that is
    still running when a test cancels it, times it out or stops the emulator under it."""
    import numpy as np
    from qiskit.circuit.library import efficient_su2
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime.fake_provider import FakeTorino

    circuit = efficient_su2(num_qubits, entanglement="linear", reps=reps)
    circuit.measure_all()
    values = np.random.default_rng(7).random(circuit.num_parameters)
    pm = generate_preset_pass_manager(optimization_level=1, backend=FakeTorino(), seed_transpiler=7)
    return pm.run(circuit).assign_parameters(values)


def sampler_input(circuit: Any, shots: int, **fields: Any) -> str:
    """A Sampler V2 job input as qrmi.primitives sends it (OpenQASM 3 pubs)."""
    import json

    from qiskit import qasm3

    pub = qasm3.dumps(circuit, disable_constants=True, allow_aliasing=True)
    body = {"pubs": [[pub, None, shots]], "shots": shots, "options": {}, "version": 2}
    return json.dumps(body | fields)


def sampler_payload(circuit: Any, shots: int) -> Any:
    """The ``qrmi.Payload`` a Sampler V2 job of ``circuit`` (an ISA circuit) is sent as."""
    import qrmi as qrmi_module

    qrmi: Any = qrmi_module
    body = sampler_input(circuit, shots, support_qiskit=True)
    return qrmi.Payload.QiskitPrimitive(input=body, program_id="sampler")
