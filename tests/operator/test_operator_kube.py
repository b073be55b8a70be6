"""The operator's blocking API client (:class:`qpu_k8s.operator.kube.Kube`) against a real
HTTP server: calls whose answer is not needed still give their connection back."""

from __future__ import annotations

import asyncio
from pathlib import Path

from qpu_k8s.operator.kube import Connection, Kube
from testsupport.nodeapi import NodeApi

CALLS = 20


def test_calls_whose_answer_is_not_read_reuse_one_connection(tmp_path: Path) -> None:
    """Before the fix every Event posted (and every status patch) left its answer unread,
    so its connection was closed instead of pooled and the next call opened a new one:
    against the apiserver, a TLS handshake per call and a close on the event loop."""
    with NodeApi("node-a") as api:
        kube = Kube(Connection.load(api.kubeconfig(tmp_path / "kubeconfig")), workers=1)

        async def post_events() -> None:
            for i in range(CALLS):
                event = {
                    "metadata": {"name": f"e{i}"},
                    "involvedObject": {"kind": "QuantumBackend", "name": "qpu"},
                    "reason": "Test",
                }
                await kube.create_event("ns", event)

        try:
            asyncio.run(post_events())
        finally:
            kube.close()
        assert len(api.created["/api/v1/namespaces/ns/events"]) == CALLS
        assert api.connections == 1
