"""Kueue on the local cluster, for the tests of the batch queue.

``hack/local-cluster/kueue.sh`` does the work (CRDs from the module, the manager as a host
process on 127.0.0.1, ``url`` webhooks with its own CA); this module runs it and reads what
Kueue writes: Workloads and their conditions. :func:`running` stops Kueue and deletes its
CRDs afterwards, so that tests after it find the cluster as the session made it (its Job
webhook would otherwise answer for every Job in the cluster).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from testsupport.cluster import (
    ClusterUnavailableError,
    LocalCluster,
    _lib_setting,
    _script,
    cache_dir,
)

KUEUE_VERSION = _lib_setting("KUEUE_VERSION", "0.17.0")
GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
QUEUE_LABEL = f"{GROUP}/queue-name"


def kueue_bin() -> Path:
    return cache_dir() / "local-cluster" / f"kueue-{KUEUE_VERSION}" / "bin"


def module_dir() -> Path:
    """Kueue's module source in the Go module cache (its CRDs and webhook manifests)."""
    return cache_dir() / "gomod" / "sigs.k8s.io" / f"kueue@v{KUEUE_VERSION}"


def crd_file(kind: str) -> Path:
    """The module's CRD of a Kueue kind (e.g. ClusterQueue)."""
    plural = kind.lower() + ("es" if kind.endswith("s") else "s")
    return module_dir() / "config" / "components" / "crd" / "bases" / f"{GROUP}_{plural}.yaml"


def unavailable_reason() -> str | None:
    if not (kueue_bin() / ".build-ok").exists():
        return (
            f"Kueue {KUEUE_VERSION} is not built here ({kueue_bin()}/.build-ok missing): run "
            "hack/local-cluster/build.sh"
        )
    return None


@contextlib.contextmanager
def running(lc: LocalCluster) -> Iterator[LocalCluster]:
    """Kueue up for the duration of the block; down with its CRDs afterwards (unless
    ``QPU_K8S_REUSE_CLUSTER=1`` keeps the cluster, and then Kueue with it)."""
    reason = unavailable_reason()
    if reason:
        raise ClusterUnavailableError(reason)
    try:
        _script("kueue.sh", "up", timeout=600)
        yield lc
    finally:
        if os.environ.get("QPU_K8S_REUSE_CLUSTER") != "1":
            _script("kueue.sh", "down", "--purge", timeout=300)


def workloads(lc: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    found = lc.kubectl_json("-n", namespace, "get", f"workloads.{GROUP}")
    items: list[dict[str, Any]] = found["items"]
    return items


def workload_of_job(lc: LocalCluster, namespace: str, job: str) -> dict[str, Any] | None:
    """The Workload Kueue made for a Job (owned by it), or None while there is none."""
    for wl in workloads(lc, namespace):
        owners = wl["metadata"].get("ownerReferences") or []
        if any(o.get("kind") == "Job" and o.get("name") == job for o in owners):
            return wl
    return None


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            found: dict[str, Any] = c
            return found
    return {}


def is_true(obj: dict[str, Any] | None, ctype: str) -> bool:
    return condition(obj, ctype).get("status") == "True"
