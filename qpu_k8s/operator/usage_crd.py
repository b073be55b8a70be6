"""The QuantumUsage CRD, generated from :class:`qpu_k8s.core.usage.UsageSpec`.

Written next to the QuantumBackend CRD by ``python -m qpu_k8s.operator.crd`` (same
structural-schema conversion). CEL rules keep a record honest at admission, whoever
writes it: the spec is immutable once written (usage is accounted once, never edited);
the release is not before the acquisition; a vendor report either carries figures or
says why not, so "not reported" can never be confused with zero.
"""

from __future__ import annotations

from typing import Any

from qpu_k8s.core.names import API_GROUP, USAGE_KIND, USAGE_PLURAL
from qpu_k8s.core.usage import UsageSpec
from qpu_k8s.operator.crd import Rule, _text, definition, model_schema, object_schema

SINGULAR = "quantumusage"
SHORT_NAMES = ["qu"]
CRD_NAME = f"{USAGE_PLURAL}.{API_GROUP}"
OUTPUT = "quantumusages.yaml"


def spec_rules() -> list[Rule]:
    return [
        Rule(
            rule="self == oldSelf",
            message="spec is immutable: a usage record is written once, when the QPU was "
            "released; create a new record instead of editing one",
        ),
        Rule(
            rule="timestamp(self.releasedAt) >= timestamp(self.acquiredAt)",
            message="releasedAt: must not be before acquiredAt",
            field_path=".releasedAt",
        ),
        Rule(
            rule="self.agent != 'dra' || size(self.claim) > 0",
            message="claim: a record of the DRA driver names its ResourceClaim",
            field_path=".claim",
            reason="FieldValueRequired",
        ),
        Rule(
            rule="self.agent != 'device-plugin' || size(self.pod) > 0",
            message="pod: a record of the device plugin names the pod that held the QPU",
            field_path=".pod",
            reason="FieldValueRequired",
        ),
    ]


def vendor_rules() -> list[Rule]:
    figures = ["sessionUsageSeconds", "quantumSeconds", "jobCount"]
    none_set = " && ".join(f"!has(self.{f})" for f in figures)
    return [
        Rule(
            rule=f"self.state != 'NotReported' || ({none_set} && size(self.reason) > 0)",
            message="vendor: NotReported carries a reason and no figures (unreported usage is "
            "not zero usage)",
            field_path=".reason",
        ),
        Rule(
            rule="self.state != 'Reported' || has(self.jobCount)",
            message="vendor.jobCount: a Reported vendor usage counts the session's jobs",
            field_path=".jobCount",
            reason="FieldValueRequired",
        ),
    ]


def spec_schema() -> dict[str, Any]:
    s = model_schema(UsageSpec)
    s["x-kubernetes-validations"] = [r.to_api() for r in spec_rules()]
    s["properties"]["vendor"]["x-kubernetes-validations"] = [r.to_api() for r in vendor_rules()]
    return s


def openapi_schema() -> dict[str, Any]:
    return object_schema(
        _text(UsageSpec.__doc__ or USAGE_KIND)
        + " Lives in the qpu-k8s namespace; spec.namespace names the workload's.",
        spec_schema(),
    )


def printer_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Workload-NS", "type": "string", "jsonPath": ".spec.namespace"},
        {"name": "Owner", "type": "string", "jsonPath": ".spec.owner.name"},
        {"name": "Claim", "type": "string", "jsonPath": ".spec.claim", "priority": 1},
        {"name": "Pod", "type": "string", "jsonPath": ".spec.pod", "priority": 1},
        {"name": "Backend", "type": "string", "jsonPath": ".spec.backend"},
        {"name": "Wall-s", "type": "number", "jsonPath": ".spec.wallSeconds"},
        {"name": "QPU-s", "type": "number", "jsonPath": ".spec.vendor.quantumSeconds"},
        {"name": "Jobs", "type": "integer", "jsonPath": ".spec.vendor.jobCount"},
        {"name": "Vendor", "type": "string", "jsonPath": ".spec.vendor.state"},
        {"name": "Released", "type": "date", "jsonPath": ".spec.releasedAt"},
        {"name": "Session", "type": "string", "jsonPath": ".spec.sessionId", "priority": 1},
    ]


def crd() -> dict[str, Any]:
    return definition(
        kind=USAGE_KIND,
        plural=USAGE_PLURAL,
        singular=SINGULAR,
        short_names=SHORT_NAMES,
        scope="Namespaced",
        schema=openapi_schema(),
        columns=printer_columns(),
    )
