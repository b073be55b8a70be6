"""Follow one collection of the apiserver: list it, then watch it from there, for good.

The node agents keep a few views current this way (their node's pods, the operator's
ConfigMap). Each view says what a listing and an event mean to it; the loop here owns the
rest: the watch's own end (the apiserver closes it after ``seconds``), a ``410 Gone`` or
any failure (the apiserver away, RBAC missing) end in a fresh listing after a backoff of
0.5 s, doubling to 30 s while failures repeat.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

from qpu_k8s.core.kubeclient import CoreApi

Obj = dict[str, Any]


def follow(
    core: CoreApi,
    path: str,
    query: Mapping[str, str],
    *,
    stop: threading.Event,
    on_list: Callable[[list[Obj]], None],
    on_event: Callable[[str, Obj], None],
    on_error: Callable[[Exception], None],
    seconds: int = 300,
    timeout: float = 10.0,
) -> None:
    """Until ``stop``: ``on_list(items)`` for every listing of ``path`` (with ``query``,
    e.g. a field selector), then ``on_event(type, object)`` for each ADDED, MODIFIED or
    DELETED event after it; ``on_error(err)`` before each backoff. Meant for a daemon
    thread: a watch in progress ends with its next event or the apiserver's timeout."""
    backoff = 0.5
    while not stop.is_set():
        try:
            body = core.get(path, query=query, timeout=timeout)
            on_list(list(body.get("items") or []))
            backoff = 0.5
            version = str((body.get("metadata") or {}).get("resourceVersion") or "")
            events = core.watch(
                path,
                query={**query, "resourceVersion": version},
                connect_timeout=timeout,
                seconds=seconds,
            )
            with contextlib.closing(events):
                for ev in events:
                    if stop.is_set():
                        return
                    kind = str(ev.get("type"))
                    obj = ev.get("object") or {}
                    if kind == "ERROR":  # e.g. 410 Gone: the version is too old; relist
                        raise RuntimeError(f"watch error: {obj.get('message')}")
                    if kind != "BOOKMARK":
                        on_event(kind, obj)
        except Exception as err:  # the apiserver away, 410 Gone, RBAC missing...
            if stop.is_set():
                return
            on_error(err)
            stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)
