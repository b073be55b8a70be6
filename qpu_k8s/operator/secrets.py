"""Vendor credentials from the Secret a QuantumBackend references, read through the API.

The values stay in this process's memory: they are registered with the redactor the moment
they are decoded, handed to the QRMI client, and never copied into status, events, logs,
metrics or the node agents' ConfigMap. Failures become a :class:`SecretProblem` that names
the Secret and the keys it needs, so the condition tells the admin exactly what to create.
A short cache keeps 1000 backends that share one Secret from reading it 1000 times a minute.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Awaitable, Callable, Mapping

from qpu_k8s.core.credentials import REDACTOR, resolve_credentials
from qpu_k8s.core.errors import CredentialsError
from qpu_k8s.core.model import QuantumBackend, SecretRef
from qpu_k8s.core.vendors import profile
from qpu_k8s.operator.kube import ApiStatusError
from qpu_k8s.operator.reconcile import SecretProblem, SecretReason

# (namespace, name) -> the Secret's ``data`` (base64 values), or raises ApiStatusError.
SecretFetcher = Callable[[str, str], Awaitable[Mapping[str, str] | None]]


def _needed(backend: QuantumBackend) -> str:
    options = profile(backend.spec.type).credential_options
    return " or ".join("+".join(sorted(o)) for o in options) or "the vendor's credential keys"


def decode(data: Mapping[str, str] | None) -> dict[str, str]:
    """Decode a Secret's ``data``; undecodable entries are skipped, never echoed."""
    out: dict[str, str] = {}
    for key, b64 in (data or {}).items():
        try:
            out[key] = base64.b64decode(b64, validate=True).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
    REDACTOR.register(out.values())
    return out


class _Static:
    def __init__(self, data: Mapping[str, str]) -> None:
        self._data = data

    def get(self, ref: SecretRef) -> Mapping[str, str]:
        del ref
        return self._data


class SecretReader:
    """Reads and checks the credentials of a backend; caches Secrets for ``ttl`` seconds."""

    def __init__(
        self,
        fetch: SecretFetcher,
        default_namespace: str,
        ttl: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.default_namespace = default_namespace
        self.ttl = ttl
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}

    def namespace_of(self, ref: SecretRef) -> str:
        return ref.namespace or self.default_namespace

    def forget(self, namespace: str | None = None, name: str | None = None) -> None:
        """Drop cached Secrets (all, or one) so the next read goes to the API."""
        if namespace is None or name is None:
            self._cache.clear()
        else:
            self._cache.pop((namespace, name), None)

    async def _data(self, backend: QuantumBackend, ref: SecretRef) -> dict[str, str]:
        key = (self.namespace_of(ref), ref.name)
        hit = self._cache.get(key)
        now = self._clock()
        if hit is not None and hit[0] > now:
            return hit[1]
        where = f"Secret {key[1]!r} in namespace {key[0]!r}"
        try:
            raw = await self._fetch(*key)
        except ApiStatusError as err:
            self._cache.pop(key, None)
            if err.status == 404:
                raise SecretProblem(
                    SecretReason.NOT_FOUND,
                    f"{where} does not exist; create it with the key(s) {_needed(backend)}, "
                    f"e.g. kubectl -n {key[0]} create secret generic {key[1]} "
                    f"--from-literal=<KEY>=<value>",
                ) from None
            if err.status in (401, 403):
                raise SecretProblem(
                    SecretReason.FORBIDDEN,
                    f"the operator may not read {where} (HTTP {err.status}); grant its "
                    "ServiceAccount get on that Secret (see the chart's RBAC)",
                ) from None
            raise SecretProblem(
                SecretReason.UNREADABLE,
                f"{where} could not be read ({err}); retrying on the next probe",
            ) from None
        data = decode(raw)
        self._cache[key] = (now + self.ttl, data)
        return data

    async def credentials(self, backend: QuantumBackend) -> dict[str, str]:
        """The backend's credential keys, complete, or a SecretProblem saying what is wrong."""
        ref = backend.spec.credentials_secret_ref
        if ref is None:
            return {}
        data = await self._data(backend, ref)
        try:
            return resolve_credentials(backend, _Static(data))
        except CredentialsError as err:
            ns = self.namespace_of(ref)
            self.forget(ns, ref.name)  # re-read at once when the admin fixes it
            msg = str(err).split(": ", 1)[-1]
            raise SecretProblem(
                SecretReason.INCOMPLETE,
                f"{msg} (namespace {ns!r}); add the missing key(s) to the Secret",
            ) from None
