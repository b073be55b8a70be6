"""The names qpu-k8s puts into the Kubernetes API, defined once.

Every default here can be changed at install time (the chart's ``resourceName`` and
``driverName``; the agents' ``--resource-name`` / ``--driver-name``), so code takes these
as defaults and passes the configured value on; it never compares against them.
"""

from __future__ import annotations

API_GROUP = "quantum.example.com"
API_VERSION = "v1alpha1"
KIND = "QuantumBackend"
PLURAL = "quantumbackends"

# The extended resource a pod asks for (device plugin; the DeviceClass maps it to DRA).
RESOURCE_NAME = f"{API_GROUP}/qpu"
# The DRA driver: also the DeviceClass's name and the attribute domain CEL selectors use.
DRIVER_NAME = f"qpu.{API_GROUP}"
# apiVersion of the opaque claim parameters our DRA driver accepts.
CLAIM_PARAMETERS_API_VERSION = f"{DRIVER_NAME}/v1alpha1"
CLAIM_PARAMETERS_KIND = "QPUClaimParameters"

# One record per acquisition, written by the node agents when it is released.
USAGE_KIND = "QuantumUsage"
USAGE_PLURAL = "quantumusages"
# How much QPU a namespace may use per period (one per namespace, named qpu-budget).
BUDGET_KIND = "QuantumBudget"
BUDGET_PLURAL = "quantumbudgets"

# The key of the node agents' config in the operator's ConfigMap (and its file name where
# the agents mount it).
NODE_CONFIG_KEY = "backends.yaml"
