"""Reading ResourceClaims (and per-claim Secrets) for NodePrepareResources.

The kubelet sends only namespace, name and UID; the allocation lives in the claim's status.
:class:`KubeClaims` reads it through the real Kubernetes client at the REST path of
``resource.k8s.io/v1`` (or ``v1beta1``: the parts we read, ``status.allocation.devices``
results and config, have the same shape in both). Any other :class:`ClaimSource` can be
given to the driver (the tests' in-memory and file-backed ones are in ``testsupport.dra``).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Protocol
from urllib.parse import quote

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from qpu_k8s.core.kubeclient import CoreApi, as_object
from qpu_k8s.resourceslices.build import GROUP

from .claimstatus import StatusWriteError

# Status answers a retry cannot change: the claim is gone (404), a conflict (409), RBAC
# refuses (403), the entries are invalid (422; also what 1.37 answers when the claim was
# recreated: "metadata.uid: field is immutable").
_PERMANENT = {404: "gone", 409: "conflict", 403: "forbidden", 422: "invalid"}


class ClaimNotFoundError(LookupError):
    """The claim (or Secret) does not exist, or the apiserver said so."""


class ClaimSource(Protocol):
    def get_claim(self, namespace: str, name: str) -> dict[str, Any]: ...
    def get_secret(self, namespace: str, name: str) -> dict[str, str]: ...


class KubeClaims:
    """Claims and Secrets from the apiserver (needs get on resourceclaims and secrets)."""

    # 5 s a try, one retry (see agent.API_RETRIES): a claim read answers in milliseconds, and
    # a prepare that cannot reach the apiserver must fail well within the kubelet's deadline.
    def __init__(self, api: client.ApiClient, api_version: str = "v1", timeout: float = 5.0):
        self.custom = client.CustomObjectsApi(api)
        self.core = CoreApi(api)
        self.api_version = api_version
        self.timeout = timeout

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return as_object(
                self.custom.get_namespaced_custom_object(
                    GROUP,
                    self.api_version,
                    namespace,
                    "resourceclaims",
                    name,
                    _request_timeout=self.timeout,
                )
            )
        except ApiException as err:
            if err.status == 404:
                raise ClaimNotFoundError(f"ResourceClaim {namespace}/{name} not found") from None
            raise

    def apply_device_status(
        self,
        namespace: str,
        name: str,
        uid: str,
        devices: list[dict[str, Any]],
        field_manager: str,
    ) -> None:
        """Server-side apply of the claim's ``status.devices`` entries owned by
        ``field_manager`` (needs patch on ``resourceclaims/status`` and the
        ``resourceclaims/driver`` node-aware verbs). ``metadata.uid`` makes it a no-op error
        on a recreated claim of the same name instead of a write to someone else's claim."""
        body = {
            "apiVersion": f"{GROUP}/{self.api_version}",
            "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "status": {"devices": devices},
        }
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP,
                self.api_version,
                namespace,
                "resourceclaims",
                name,
                body,
                field_manager=field_manager,
                force=True,
                _content_type="application/apply-patch+yaml",
                _request_timeout=self.timeout,
            )
        except ApiException as err:
            raise status_write_error(err) from None

    def get_secret(self, namespace: str, name: str) -> dict[str, str]:
        try:
            secret = self.core.get(
                f"/api/v1/namespaces/{quote(namespace, safe='')}/secrets/{quote(name, safe='')}",
                timeout=self.timeout,
            )
        except ApiException as err:
            if err.status == 404:
                raise ClaimNotFoundError(f"Secret {namespace}/{name} not found") from None
            if err.status == 403:
                raise ClaimNotFoundError(
                    f"Secret {namespace}/{name} cannot be read by the driver (RBAC: get secrets)"
                ) from None
            raise
        data = secret.get("data") or {}
        return {str(k): base64.b64decode(v).decode("utf-8") for k, v in data.items()}


def status_write_error(err: ApiException) -> StatusWriteError:
    """What a failed status write means: permanent (with why) or worth retrying."""
    kind = _PERMANENT.get(err.status or 0)
    if kind == "invalid" and _forbidden_field(err):
        # The per-driver authorization of status.devices (1.36+) answers in the validation:
        # 422 with a FieldValueForbidden cause, not 403.
        kind = "forbidden"
    if kind is not None:
        return StatusWriteError(_reason(err), permanent=True, kind=kind)
    return StatusWriteError(_reason(err), permanent=False, kind="unavailable")


def _reason(err: ApiException) -> str:
    """The apiserver's message of a failed request (its Status body), else the HTTP reason."""
    try:
        message = json.loads(err.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"HTTP {err.status}: {message or err.reason}"


def _forbidden_field(err: ApiException) -> bool:
    try:
        details = json.loads(err.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return False
    return any(c.get("reason") == "FieldValueForbidden" for c in details.get("causes") or [])
