"""The node agents' config: every usable QuantumBackend rendered into one ConfigMap.

The device plugin and the DRA driver follow it through the apiserver
(:mod:`qpu_k8s.node.configfeed`) and mount it as ``/etc/qpu-k8s/config/backends.yaml``,
read until the apiserver first answers. It is rendered with
:func:`qpu_k8s.core.model.dump_backend_config`, which only knows non-secret fields
(credentials stay in the Secret named by each backend). A backend leaves the ConfigMap last
when it is deleted: the node agents need its config to release what they acquired, so the
finalizer removes it only after slices and claims.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qpu_k8s.core.model import InvalidBackendError, QuantumBackend, dump_backend_config
from qpu_k8s.core.names import NODE_CONFIG_KEY

log = logging.getLogger(__name__)

DATA_KEY = NODE_CONFIG_KEY
MAX_BYTES = 1_000_000  # the apiserver refuses ConfigMaps over 1 MiB (data + metadata)
HASH_ANNOTATION = "quantum.example.com/config-sha256"


class ConfigTooLargeError(ValueError):
    """The rendered config does not fit in one ConfigMap."""


@dataclass(frozen=True)
class Selection:
    """The backends that go to the node agents, and why the others were left out."""

    backends: list[QuantumBackend]
    invalid: dict[str, list[tuple[str, str]]]
    removed: list[str]


def select(objects: Iterable[Mapping[str, Any]], released: Iterable[str] = ()) -> Selection:
    """Valid QuantumBackends, minus deleted ones whose finalizer finished its cleanup."""
    done = set(released)
    keep: list[QuantumBackend] = []
    invalid: dict[str, list[tuple[str, str]]] = {}
    removed: list[str] = []
    for obj in objects:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        if meta.get("deletionTimestamp") and name in done:
            removed.append(name)
            continue
        try:
            keep.append(QuantumBackend.from_object(obj))
        except InvalidBackendError as err:
            invalid[name] = err.problems
    keep.sort(key=lambda b: b.name)
    return Selection(keep, invalid, removed)


def render(name: str, namespace: str, backends: Iterable[QuantumBackend]) -> dict[str, Any]:
    """The ConfigMap object; raises ConfigTooLargeError past the apiserver's size limit."""
    text = dump_backend_config(sorted(backends, key=lambda b: b.name))
    size = len(text.encode("utf-8"))
    if size > MAX_BYTES:
        raise ConfigTooLargeError(
            f"the node config is {size} bytes, over the ConfigMap limit of {MAX_BYTES}; "
            "remove backends or shorten their config"
        )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/part-of": "qpu-k8s",
                "app.kubernetes.io/managed-by": "qpu-k8s-operator",
            },
            "annotations": {HASH_ANNOTATION: hashlib.sha256(text.encode()).hexdigest()},
        },
        "data": {DATA_KEY: text},
    }


def same_content(current: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    if current is None:
        return False
    return bool((current.get("data") or {}) == wanted["data"])
