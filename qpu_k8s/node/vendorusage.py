"""The vendor's own usage figures of one released session, read from its REST API.

QRMI has no usage call, so the node agent asks the vendor directly, with the backend's
config and credentials it already holds (never written anywhere). IBM Qiskit Runtime
(both the ``ibm-quantum-compute-service`` and ``qiskit-runtime-service`` types): an IAM
token (``POST {IAM}/identity/token``), then ``GET {endpoint}/sessions/{id}`` (its
``elapsed_time``: the session's usage seconds) and ``GET {endpoint}/jobs?session_id=``
(``count`` and each job's ``usage.quantum_seconds``). Figures the API leaves out stay
absent: the record then says ``NotReported`` with the reason, never zero. Other types:
not reported (their QRMI acquire holds no vendor session with usage of its own).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

from qpu_k8s.core.credentials import redact
from qpu_k8s.core.model import QuantumBackend
from qpu_k8s.core.usage import MAX_JOBS_LISTED, ReportState, VendorJob, VendorUsage
from qpu_k8s.core.vendors import ResourceType

_IBM_PREFIX = {
    ResourceType.IBM_QUANTUM_COMPUTE_SERVICE: "QRMI_IBM_QCS_",
    ResourceType.QISKIT_RUNTIME_SERVICE: "QRMI_IBM_QRS_",
}
API_VERSION_HEADER = "2025-01-01"
PAGE = 100


class UsageFetchError(Exception):
    """The vendor could not be asked (network, auth, 5xx): worth another try later."""


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class VendorUsageReader:
    """Reads a session's usage from the vendor; one HTTP pool for the agent."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.http = urllib3.PoolManager(
            timeout=urllib3.Timeout(total=timeout), retries=False, num_pools=4
        )

    def read(
        self, backend: QuantumBackend, creds: Mapping[str, str], session_id: str
    ) -> VendorUsage:
        """The figures, or ``NotReported``; raises :class:`UsageFetchError` to retry."""
        prefix = _IBM_PREFIX.get(backend.spec.type)
        if prefix is None:
            return VendorUsage.not_reported(
                f"type {backend.spec.type.value}: qpu-k8s reads no usage figures from this "
                "vendor's API"
            )
        cfg = backend.spec.config
        endpoint = cfg.get(prefix + "ENDPOINT", "").rstrip("/")
        iam = cfg.get(prefix + "IAM_ENDPOINT", "").rstrip("/")
        apikey = creds.get(prefix + "IAM_APIKEY", "")
        if not endpoint or not iam or not apikey:
            return VendorUsage.not_reported("the backend's endpoint or API key is not configured")
        token = self._iam_token(iam, apikey)
        headers = {
            "Authorization": f"Bearer {token}",
            "Service-CRN": cfg.get(prefix + "SERVICE_CRN", ""),
            "IBM-API-Version": API_VERSION_HEADER,
            "Accept": "application/json",
        }
        session = self._get(f"{endpoint}/sessions/{quote(session_id, safe='')}", headers)
        jobs, count = self._jobs(endpoint, session_id, headers)
        return ibm_usage(session, jobs, count)

    def _iam_token(self, iam: str, apikey: str) -> str:
        body = urlencode({"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": apikey})
        data = self._call(
            "POST",
            f"{iam}/identity/token",
            {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
            body,
        )
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            raise UsageFetchError("IAM answered without an access_token")
        return token

    def _jobs(
        self, endpoint: str, session_id: str, headers: Mapping[str, str]
    ) -> tuple[list[dict[str, Any]], int | None]:
        out: list[dict[str, Any]] = []
        count: int | None = None
        offset = 0
        while True:
            query = urlencode(
                {"session_id": session_id, "limit": PAGE, "offset": offset, "sort": "ASC"}
            )
            page = self._get(f"{endpoint}/jobs?{query}", headers)
            jobs = [j for j in page.get("jobs") or [] if isinstance(j, dict)]
            out += jobs
            raw_count = page.get("count")
            count = raw_count if isinstance(raw_count, int) else None
            offset += len(jobs)
            if not jobs or count is None or offset >= count:
                return out, count if count is not None else len(out)

    def _get(self, url: str, headers: Mapping[str, str]) -> dict[str, Any]:
        return self._call("GET", url, headers)

    def _call(
        self, method: str, url: str, headers: Mapping[str, str], body: str | None = None
    ) -> dict[str, Any]:
        where = f"{method} {url.partition('?')[0]}"
        try:
            resp = self.http.request(method, url, headers=dict(headers), body=body)
        except urllib3.exceptions.HTTPError as err:
            raise UsageFetchError(redact(f"{where}: {err}")) from None
        if resp.status >= 300:
            raise UsageFetchError(f"{where}: HTTP {resp.status}")
        try:
            data = json.loads(resp.data)
        except ValueError:
            raise UsageFetchError(f"{where}: not JSON") from None
        if not isinstance(data, dict):
            raise UsageFetchError(f"{where}: not a JSON object")
        return data


def ibm_usage(
    session: Mapping[str, Any], jobs: list[dict[str, Any]], count: int | None
) -> VendorUsage:
    """The figures of one IBM session from its ``/sessions/{id}`` and ``/jobs`` answers."""
    listed = []
    seconds: list[float] = []
    for job in jobs:
        usage = job.get("usage")
        q = _number(usage.get("quantum_seconds")) if isinstance(usage, dict) else None
        if q is not None:
            seconds.append(q)
        state = job.get("state")
        status = state.get("status") if isinstance(state, dict) else job.get("status")
        listed.append(VendorJob(id=str(job.get("id")), quantum_seconds=q, status=str(status or "")))
    session_seconds = _number(session.get("elapsed_time"))
    if session_seconds is None and not seconds:
        return VendorUsage.not_reported(
            "the vendor's API reported no usage for this session (no elapsed_time, no job usage)"
        )
    return VendorUsage(
        state=ReportState.REPORTED,
        session_usage_seconds=session_seconds,
        quantum_seconds=round(sum(seconds), 3) if len(seconds) == len(jobs) else None,
        job_count=count if count is not None else len(jobs),
        jobs=listed[:MAX_JOBS_LISTED],
    )
