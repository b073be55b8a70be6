"""Pointing clients at an emulator, and driving one that runs in another process.

``ConfigHelpers`` turns an emulator URL and its settings into the QRMI config dicts
(``QuantumResource.from_config``), the pod env contract, and the arguments the vendor SDKs
need. ``EmulatorClient`` speaks the ``/_emulator`` admin API with the standard library
only, for tests that start ``qpu-k8s emulator`` as a subprocess.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from . import catalog
from .config import EmulatorConfig

QCS = "ibm-quantum-compute-service"
QRS = "qiskit-runtime-service"
PASQAL_CLOUD = "pasqal-cloud"
_IBM_PREFIX = {QCS: "QRMI_IBM_QCS_", QRS: "QRMI_IBM_QRS_"}
_SHELL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigHelpers:
    """Mixin: needs ``self.url`` (e.g. ``http://127.0.0.1:8080``) and ``self.config``."""

    config: EmulatorConfig

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _served(self, name: str, vendor: catalog.Vendor) -> catalog.BackendSpec:
        spec = catalog.get(name)
        if spec.vendor != vendor:
            helper = "pasqal_config" if spec.vendor == catalog.Vendor.PASQAL else "ibm_config"
            raise ValueError(f"{name} is a {spec.vendor} backend: use {helper}()")
        if spec not in self.config.served():
            raise ValueError(f"{name} is not served by this emulator (see its 'backends' setting)")
        return spec

    # ---- IBM -----------------------------------------------------------------------------
    def ibm_config(self, backend: str, resource_type: str = QCS, **extra: str) -> dict[str, str]:
        """Unprefixed non-secret QRMI keys for an IBM backend (``ENDPOINT`` ends in /api/v1)."""
        self._served(backend, catalog.Vendor.IBM)
        prefix = _ibm_prefix(resource_type)
        return {
            f"{prefix}ENDPOINT": f"{self.url}/api/v1",
            f"{prefix}IAM_ENDPOINT": self.url,
            f"{prefix}SERVICE_CRN": self.config.service_crn,
            **extra,
        }

    def ibm_credentials(self, resource_type: str = QCS) -> dict[str, str]:
        return {f"{_ibm_prefix(resource_type)}IAM_APIKEY": self.config.first_api_key}

    def runtime_service_kwargs(self) -> dict[str, str]:
        """Arguments for ``QiskitRuntimeService(**kwargs)`` (with ``runtime_service_env``)."""
        return {
            "channel": "ibm_quantum_platform",
            "token": self.config.first_api_key,
            "instance": self.config.service_crn,
            # A URL containing "experimental" is used as the API base as it is.
            "url": f"{self.url}/experimental/api/v1",
        }

    def runtime_service_env(self) -> dict[str, str]:
        """Env for qiskit-ibm-runtime: IAM at the emulator, no IBM Cloud instance lookup."""
        return {"IAM_URL": self.url, "QISKIT_FUNCTIONS_EXPERIMENTAL": "1"}

    # ---- Pasqal --------------------------------------------------------------------------
    def pasqal_config(self, device: str, **extra: str) -> dict[str, str]:
        """Unprefixed non-secret QRMI keys for a Pasqal device type."""
        self._served(device, catalog.Vendor.PASQAL)
        return {
            "QRMI_PASQAL_CLOUD_BASE_URL": self.url,
            "QRMI_PASQAL_CLOUD_PROJECT_ID": self.config.first_project,
            "QRMI_PASQAL_CLOUD_AUTH_ENDPOINT": self.pasqal_token_endpoint,
            **extra,
        }

    def pasqal_credentials(self) -> dict[str, str]:
        return {"QRMI_PASQAL_CLOUD_AUTH_TOKEN": self.config.first_pasqal_token}

    @property
    def pasqal_token_endpoint(self) -> str:
        return f"{self.url}/oauth/token"

    def pasqal_endpoints(self) -> dict[str, str]:
        """``pasqal_cloud.endpoints.Endpoints(**this)`` for the pasqal-cloud SDK."""
        return {"core": f"{self.url}/core-fast", "account": f"{self.url}/account"}

    # ---- either --------------------------------------------------------------------------
    def qrmi_config(self, backend: str, resource_type: str | None = None) -> dict[str, str]:
        """Config and credentials in one dict, for ``QuantumResource.from_config``."""
        spec = catalog.get(backend)
        rtype = resource_type or spec.default_resource_type
        if spec.vendor == catalog.Vendor.IBM:
            return {**self.ibm_config(backend, rtype), **self.ibm_credentials(rtype)}
        return {**self.pasqal_config(backend), **self.pasqal_credentials()}

    def job_env(
        self,
        backends: list[str],
        acquisition_tokens: dict[str, str] | None = None,
        resource_types: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """The env a pod gets for ``backends`` (same contract as the Slurm plugin).

        ``QRMI_JOB_QPU_RESOURCES``/``_TYPES`` (and the ``SLURM_`` aliases), every config and
        credential key as ``{name}_{KEY}``, and ``{name}_QRMI_JOB_ACQUISITION_TOKEN``.
        """
        tokens = acquisition_tokens or {}
        types = resource_types or {}
        env: dict[str, str] = {}
        type_list = []
        for name in backends:
            if not _SHELL_NAME.match(name):
                raise ValueError(f"backend name {name!r} is not a valid env-var prefix")
            rtype = types.get(name) or catalog.get(name).default_resource_type
            type_list.append(rtype)
            for key, value in self.qrmi_config(name, rtype).items():
                env[f"{name}_{key}"] = value
            if name in tokens:
                env[f"{name}_QRMI_JOB_ACQUISITION_TOKEN"] = tokens[name]
        env["QRMI_JOB_QPU_RESOURCES"] = ",".join(backends)
        env["QRMI_JOB_QPU_TYPES"] = ",".join(type_list)
        env["SLURM_JOB_QPU_RESOURCES"] = env["QRMI_JOB_QPU_RESOURCES"]
        env["SLURM_JOB_QPU_TYPES"] = env["QRMI_JOB_QPU_TYPES"]
        return env


def _ibm_prefix(resource_type: str) -> str:
    try:
        return _IBM_PREFIX[resource_type]
    except KeyError:
        raise ValueError(
            f"resource_type must be one of {sorted(_IBM_PREFIX)} for an IBM backend, "
            f"got {resource_type!r}"
        ) from None


class EmulatorClient(ConfigHelpers):
    """Admin-API client for an emulator in another process (``qpu-k8s emulator``).

    ``config`` must carry the credentials that emulator accepts (defaults match the
    defaults of ``qpu-k8s emulator``).
    """

    def __init__(self, url: str, config: EmulatorConfig | None = None, timeout: float = 10.0):
        self._url = url.rstrip("/")
        self.config = config or EmulatorConfig()
        self.timeout = timeout

    @property
    def url(self) -> str:
        return self._url

    def _call(self, method: str, path: str, body: Any = None, **query: str | None) -> Any:
        qs = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        url = f"{self._url}/_emulator{path}" + (f"?{qs}" if qs else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - http(s) URL
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(
                f"emulator admin {method} {path} failed: {exc.code} {detail}"
            ) from None

    def health(self) -> bool:
        return bool(self._call("GET", "/health").get("ok"))

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/state")
        return result

    def sessions(self, backend: str | None = None, open_only: bool = False) -> list[dict[str, Any]]:
        result = self._call("GET", "/sessions", backend=backend, open="true" if open_only else None)
        sessions: list[dict[str, Any]] = result["sessions"]
        return sessions

    def jobs(self, backend: str | None = None) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self._call("GET", "/jobs", backend=backend)["jobs"]
        return jobs

    def set_fault(self, kind: str, backend: str | None = None, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "POST", "/faults", {"kind": kind, "backend": backend, **fields}
        )
        return result

    def clear_faults(self, kind: str | None = None, backend: str | None = None) -> int:
        return int(self._call("DELETE", "/faults", kind=kind, backend=backend)["removed"])

    def set_online(
        self, backend: str, online: bool = True, reason: str = "", paused: bool = False
    ) -> None:
        self._call(
            "POST",
            f"/backends/{backend}/online",
            {"online": online, "reason": reason, "paused": paused},
        )

    def pause(self, backend: str, reason: str) -> None:
        """The vendor pauses ``backend`` with ``reason`` (see :func:`.admin.pause`)."""
        self._call("POST", f"/backends/{backend}/pause", {"reason": reason})

    def resume(self, backend: str) -> None:
        self._call("POST", f"/backends/{backend}/resume")

    def reset(self) -> None:
        self._call("POST", "/reset")
