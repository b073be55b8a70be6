"""Opaque per-claim parameters of our driver, parsed strictly.

A claim (or a DeviceClass) may carry, in ``spec.devices.config[].opaque``::

    driver: qpu.quantum.example.com
    parameters:
      apiVersion: qpu.quantum.example.com/v1alpha1
      kind: QPUClaimParameters
      sessionMode: batch              # IBM session mode: dedicated | batch
      sessionMaxTtlSeconds: 3600      # IBM session max TTL, 60..86400
      credentialsSecretRef:           # per-user credentials: a Secret in the claim's namespace
        name: alice-ibm

An unknown field, a wrong type or a bad value fails NodePrepareResources with a message that
names the field by its path in the claim (``spec.devices.config[0].opaque.parameters.X``) and
says how to fix it. ``manifests/validatingadmissionpolicy-claim-parameters.yaml`` rejects the
same mistakes at admission where CEL can see them. Several configs that apply to one request
are merged in order (class configs, then claim configs; later ones win field by field), as
Kubernetes documents for opaque configs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from qpu_k8s.core.names import CLAIM_PARAMETERS_API_VERSION, CLAIM_PARAMETERS_KIND

API_VERSION = CLAIM_PARAMETERS_API_VERSION
KIND = CLAIM_PARAMETERS_KIND
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class InvalidParametersError(ValueError):
    """Opaque claim parameters our driver cannot accept; the message names every field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ClaimSecretRef(_Strict):
    """A Secret in the claim's own namespace (no namespace field: no cross-namespace reads)."""

    name: Annotated[StrictStr, Field(min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN)]


class QPUClaimParameters(_Strict):
    api_version: Annotated[Literal["qpu.quantum.example.com/v1alpha1"], Field(alias="apiVersion")]
    kind: Literal["QPUClaimParameters"]
    session_mode: Annotated[
        Literal["dedicated", "batch"] | None, Field(default=None, alias="sessionMode")
    ] = None
    session_max_ttl_seconds: Annotated[
        StrictInt | None, Field(default=None, ge=60, le=86400, alias="sessionMaxTtlSeconds")
    ] = None
    credentials_secret_ref: Annotated[
        ClaimSecretRef | None, Field(default=None, alias="credentialsSecretRef")
    ] = None


class Effective(BaseModel):
    """The merged parameters for one request (what prepare acts on)."""

    model_config = ConfigDict(frozen=True)

    session_mode: str | None = None
    session_max_ttl_seconds: int | None = None
    credentials_secret: str | None = None


_FIELD_HINTS = {
    "apiVersion": f"set apiVersion: {API_VERSION}",
    "kind": f"set kind: {KIND}",
    "sessionMode": "use dedicated or batch",
    "sessionMaxTtlSeconds": "use an integer number of seconds from 60 to 86400",
    "credentialsSecretRef": "use {name: <Secret in the claim's namespace>}",
}


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_parameters(raw: Any, where: str) -> QPUClaimParameters:
    """Validate one ``opaque.parameters`` object; ``where`` is its path in the claim."""
    if not isinstance(raw, Mapping):
        raise InvalidParametersError(
            f"{where}: must be an object with apiVersion {API_VERSION} and kind {KIND}"
        )
    try:
        return QPUClaimParameters.model_validate(dict(raw))
    except ValidationError as err:
        problems = []
        for e in err.errors(include_url=False, include_input=False):
            field = _path(e["loc"])
            top = str(e["loc"][0]) if e["loc"] else ""
            if e["type"] == "extra_forbidden":
                nested = len(e["loc"]) > 1 and top == "credentialsSecretRef"
                allowed = "name" if nested else ", ".join(_FIELD_HINTS)
                problems.append(f"{where}.{field}: unknown field; allowed fields: {allowed}")
            else:
                hint = _FIELD_HINTS.get(top, "")
                problems.append(f"{where}.{field}: {e['msg']}" + (f" ({hint})" if hint else ""))
        raise InvalidParametersError("; ".join(problems)) from None


def effective_parameters(
    configs: Sequence[Mapping[str, Any]], request: str, driver: str, base_path: str
) -> Effective:
    """Merge every opaque config of ``driver`` that applies to ``request`` (in order).

    ``configs`` are ``status.allocation.devices.config`` (or ``spec.devices.config``)
    entries; an entry with no ``requests`` applies to all. A sub-request ``req/sub`` is
    matched by ``req`` too.
    """
    merged: dict[str, Any] = {}
    parent = request.split("/", 1)[0]
    for index, cfg in enumerate(configs):
        opaque = cfg.get("opaque") or {}
        if opaque.get("driver") != driver:
            continue
        requests = cfg.get("requests") or []
        if requests and request not in requests and parent not in requests:
            continue
        params = parse_parameters(
            opaque.get("parameters"), f"{base_path}[{index}].opaque.parameters"
        )
        if params.session_mode is not None:
            merged["session_mode"] = params.session_mode
        if params.session_max_ttl_seconds is not None:
            merged["session_max_ttl_seconds"] = params.session_max_ttl_seconds
        if params.credentials_secret_ref is not None:
            merged["credentials_secret"] = params.credentials_secret_ref.name
    return Effective(**merged)
