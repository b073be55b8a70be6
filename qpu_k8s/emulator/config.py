"""Emulator settings: which credentials it accepts, which backends it serves, timings.

The credential defaults are fake and public, yet handled as secrets: they are excluded
from ``repr`` and never logged, so the code paths that carry real keys are exercised too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import catalog

DEFAULT_API_KEY = "emulator-apikey"
DEFAULT_SERVICE_CRN = (
    "crn:v1:bluemix:public:quantum-computing:us-east:a/emulator:qpu-k8s-emulator::"
)
DEFAULT_PASQAL_TOKEN = "emulator-pasqal-token"  # noqa: S105
DEFAULT_PASQAL_CLIENT_ID = "emulator-client"
DEFAULT_PASQAL_CLIENT_SECRET = "emulator-client-secret"  # noqa: S105
DEFAULT_PASQAL_USERNAME = "emulator-user"
DEFAULT_PASQAL_PASSWORD = "emulator-password"  # noqa: S105
DEFAULT_PASQAL_PROJECT = "emulator-project"


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything the server needs; ``port=0`` picks a free port."""

    host: str = "127.0.0.1"
    port: int = 0
    # IBM: IAM API keys accepted at /identity/token, and the one service instance served.
    api_keys: frozenset[str] = field(default=frozenset({DEFAULT_API_KEY}), repr=False)
    service_crn: str = DEFAULT_SERVICE_CRN
    # Pasqal: static bearer tokens, client-credential pairs, username/password pairs.
    pasqal_tokens: frozenset[str] = field(default=frozenset({DEFAULT_PASQAL_TOKEN}), repr=False)
    pasqal_clients: tuple[tuple[str, str], ...] = field(
        default=((DEFAULT_PASQAL_CLIENT_ID, DEFAULT_PASQAL_CLIENT_SECRET),), repr=False
    )
    pasqal_users: tuple[tuple[str, str], ...] = field(
        default=((DEFAULT_PASQAL_USERNAME, DEFAULT_PASQAL_PASSWORD),), repr=False
    )
    pasqal_projects: frozenset[str] = frozenset({DEFAULT_PASQAL_PROJECT})
    # Served backends (names from the catalogue); None serves them all.
    backends: tuple[str, ...] | None = None
    # Simulate IBM backends with their calibrated noise (False: ideal simulation).
    noise: bool = True
    # Lifetime of issued access tokens.
    token_ttl_seconds: int = 3600
    # A status poll of an unfinished job waits up to this long for it to finish before it
    # answers (clients poll every 1-2 s; this keeps short jobs from paying a full interval).
    settle_seconds: float = 0.5
    # Simulations running at once, each in its own worker process (each backend runs one
    # job at a time, like a QPU).
    max_workers: int = 2
    # Most qubits a circuit may act on; 0: as many as the backend has (wide circuits are
    # simulated ideally and degraded by the fidelity model, see sim_qiskit).
    max_sim_qubits: int = 0
    # Circuits on at most this many qubits get the exact simulation with calibrated noise.
    max_exact_qubits: int = 10
    # Most atoms a pulser sequence may hold (qutip's cost doubles per atom).
    max_sim_atoms: int = 10
    # Most shots (IBM) or runs (Pasqal) per pub or job, as the vendors cap them.
    max_shots: int = 100_000
    # A job still running after this many seconds is killed ("Cancelled - Ran too long");
    # a client's own shorter limit (the job's ``cost``) wins.
    max_job_seconds: float = 300.0
    # Jobs waiting per backend; a full queue refuses new jobs (HTTP 429). 0: unbounded.
    max_queued_jobs: int = 100
    # Bond-dimension cap of the matrix-product-state simulation of wide circuits.
    mps_max_bond: int = 16
    # Start the workers' fork server (imports qiskit, pulser) when the server starts, so
    # the first job does not wait for it.
    warm_workers: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if not self.api_keys:
            raise ValueError("api_keys must hold at least one accepted IAM API key")
        if self.backends is not None:
            for name in self.backends:
                catalog.get(name)
        if self.settle_seconds < 0:
            raise ValueError("settle_seconds must be >= 0")
        for name in ("max_sim_qubits", "max_exact_qubits", "max_queued_jobs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_workers", "max_sim_atoms", "max_shots", "mps_max_bond"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.max_job_seconds > 0:
            raise ValueError(f"max_job_seconds must be > 0, got {self.max_job_seconds}")

    def served(self) -> tuple[catalog.BackendSpec, ...]:
        return catalog.select(
            catalog.CATALOG, list(self.backends) if self.backends is not None else None
        )

    @property
    def first_api_key(self) -> str:
        return sorted(self.api_keys)[0]

    @property
    def first_pasqal_token(self) -> str:
        return sorted(self.pasqal_tokens)[0] if self.pasqal_tokens else ""

    @property
    def first_project(self) -> str:
        return sorted(self.pasqal_projects)[0]
