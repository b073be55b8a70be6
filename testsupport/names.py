"""The names the tests expect the agents to use, written out rather than imported from
``qpu_k8s.core.names``: a changed default then fails a test instead of passing silently."""

from __future__ import annotations

RESOURCE = "quantum.example.com/qpu"  # the device plugin's extended resource
DRIVER = "qpu.quantum.example.com"  # the DRA driver (and the attribute domain)
NODE_LABEL = "qpu-k8s.test/node"  # the label node-bound test backends select their node by
