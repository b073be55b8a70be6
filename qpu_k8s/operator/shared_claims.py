"""Shared ResourceClaims: one per (namespace, QPU) that many pods of the namespace reference.

Trigger: a namespace label per backend, set by an admin::

    kubectl label namespace team-a shared.quantum.example.com/ibm-torino=true

makes the operator keep a ResourceClaim ``qpu-ibm-torino`` in ``team-a`` that selects one
lane of that backend; pods list it under ``spec.resourceClaims[].resourceClaimName`` and so
share one QPU session (DRA prepares a claim once per node). Removing the label, or deleting
the backend, deletes the claim. A label (not a field in the QuantumBackend) keeps the
decision with whoever administers the namespace, is selectable (``kubectl get ns -l
shared.quantum.example.com/ibm-torino``) and needs no change to the backend's spec.

Everything here is pure: :func:`plan` diffs what the labels ask for against the claims that
exist; the controller applies the plan. Live acquisitions are counted from the claims'
``status.reservedFor``: a reserved shared claim is one QRMI acquisition on its node.
Per-pod claims and device-plugin allocations are node-local and not counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qpu_k8s.core.names import DRIVER_NAME

NS_LABEL_PREFIX = "shared.quantum.example.com/"
MANAGED_BY_KEY = "app.kubernetes.io/managed-by"
MANAGED_BY = "qpu-k8s-operator"
BACKEND_LABEL = "quantum.example.com/backend"
SELECTOR = f"{MANAGED_BY_KEY}={MANAGED_BY}"
REQUEST_NAME = "qpu"
_OFF = {"false", "no", "0", "off"}


def claim_name(backend: str) -> str:
    return f"qpu-{backend}"


def requested(labels: Mapping[str, str] | None) -> set[str]:
    """Backends a namespace asks to share (label value anything but false/no/0/off)."""
    out = set()
    for key, value in (labels or {}).items():
        if key.startswith(NS_LABEL_PREFIX) and str(value).lower() not in _OFF:
            name = key.removeprefix(NS_LABEL_PREFIX)
            if name:
                out.add(name)
    return out


def claim_spec(backend: str, driver: str = DRIVER_NAME) -> dict[str, Any]:
    """One device of the DeviceClass named ``driver`` whose ``backend`` attribute matches."""
    return {
        "devices": {
            "requests": [
                {
                    "name": REQUEST_NAME,
                    "exactly": {
                        "deviceClassName": driver,
                        "allocationMode": "ExactCount",
                        "count": 1,
                        "selectors": [
                            {
                                "cel": {
                                    "expression": f"device.attributes[{json.dumps(driver)}]"
                                    f".backend == {json.dumps(backend)}"
                                }
                            }
                        ],
                    },
                }
            ]
        }
    }


def claim_body(backend: str, namespace: str, driver: str = DRIVER_NAME) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {
            "name": claim_name(backend),
            "namespace": namespace,
            "labels": {MANAGED_BY_KEY: MANAGED_BY, BACKEND_LABEL: backend},
            "annotations": {
                "quantum.example.com/shared-by": f"namespace label {NS_LABEL_PREFIX}{backend}"
            },
        },
        "spec": claim_spec(backend, driver),
    }


def reservations(claim: Mapping[str, Any]) -> int:
    status = claim.get("status") or {}
    return len(status.get("reservedFor") or [])


@dataclass
class Plan:
    """What to change so the claims match the labels."""

    create: list[tuple[str, str]] = field(default_factory=list)  # (namespace, backend)
    delete: list[tuple[str, str]] = field(default_factory=list)  # (namespace, claim name)
    # Claims whose spec is outdated but that pods still hold: replaced once released.
    held: list[tuple[str, str]] = field(default_factory=list)


def plan(
    namespaces: Iterable[Mapping[str, Any]],
    backends: Iterable[str],
    claims: Iterable[Mapping[str, Any]],
    driver: str = DRIVER_NAME,
) -> Plan:
    """Diff wanted claims (labels ∩ live backends) against the managed claims that exist."""
    live = set(backends)
    wanted: set[tuple[str, str]] = set()
    for nsobj in namespaces:
        meta = nsobj.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        for b in requested(meta.get("labels")) & live:
            wanted.add((str(meta.get("name")), b))
    out = Plan()
    have: set[tuple[str, str]] = set()
    for c in claims:
        cmeta = c.get("metadata") or {}
        ns, name = str(cmeta.get("namespace")), str(cmeta.get("name"))
        backend = str((cmeta.get("labels") or {}).get(BACKEND_LABEL, ""))
        if cmeta.get("deletionTimestamp"):
            continue
        if (ns, backend) not in wanted or name != claim_name(backend):
            out.delete.append((ns, name))
            continue
        if c.get("spec") != claim_spec(backend, driver):
            if reservations(c):
                out.held.append((ns, name))
            else:
                out.delete.append((ns, name))
                continue
        have.add((ns, backend))
    out.create = sorted(wanted - have)
    out.delete.sort()
    return out


@dataclass(frozen=True)
class Counts:
    shared_claims: int = 0
    live_acquisitions: int = 0


def count(claims: Iterable[Mapping[str, Any]]) -> dict[str, Counts]:
    """Per backend: managed claims, and how many of them pods hold right now."""
    totals: dict[str, list[int]] = {}
    for c in claims:
        backend = ((c.get("metadata") or {}).get("labels") or {}).get(BACKEND_LABEL)
        if not backend:
            continue
        t = totals.setdefault(backend, [0, 0])
        t[0] += 1
        t[1] += 1 if reservations(c) else 0
    return {b: Counts(n, live) for b, (n, live) in totals.items()}
