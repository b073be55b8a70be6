"""The QuantumBudget CRD, generated from :mod:`qpu_k8s.core.budget` (spec and status models).

CEL rules refuse a budget that could not be enforced as written, at admission, with the
field named: one budget per namespace, named ``qpu-budget`` (the admission policy looks it
up by that name); at least one limit; ``periodStart`` only with ``periodSeconds``.
"""

from __future__ import annotations

from typing import Any

from qpu_k8s.core.budget import BUDGET_NAME, BudgetSpec, BudgetStatus
from qpu_k8s.core.names import BUDGET_KIND, BUDGET_PLURAL
from qpu_k8s.operator.crd import Rule, _text, definition, model_schema, object_schema

SINGULAR = "quantumbudget"
SHORT_NAMES = ["qbudget"]
OUTPUT = "quantumbudgets.yaml"


def root_rules() -> list[Rule]:
    return [
        Rule(
            rule=f"self.metadata.name == '{BUDGET_NAME}'",
            message=f"metadata.name: a namespace has one QPU budget, named {BUDGET_NAME} "
            "(the admission policy looks it up by that name)",
        ),
    ]


def spec_rules() -> list[Rule]:
    return [
        Rule(
            rule="has(self.qpuSeconds) || has(self.sessions)",
            message="spec: set qpuSeconds or sessions (or both): a budget without a limit "
            "limits nothing",
            field_path=".qpuSeconds",
            reason="FieldValueRequired",
        ),
        Rule(
            rule="!has(self.periodStart) || has(self.periodSeconds)",
            message="periodStart: only with periodSeconds (calendar periods start on their own)",
            field_path=".periodStart",
        ),
    ]


def openapi_schema() -> dict[str, Any]:
    spec = model_schema(BudgetSpec)
    spec["x-kubernetes-validations"] = [r.to_api() for r in spec_rules()]
    status = model_schema(BudgetStatus)
    status.pop("required", None)  # only the operator writes status, field by field
    return object_schema(
        _text(
            "How much QPU the namespace may use per period (one per namespace, named "
            f"{BUDGET_NAME}, written by cluster admins). The operator keeps status from the "
            "QuantumUsage records; while status.spent is true, new QPU pods and claims in the "
            "namespace are refused at admission with status.message."
        ),
        spec,
        status,
        root_rules(),
    )


def printer_columns() -> list[dict[str, Any]]:
    return [
        {"name": "QPU-s", "type": "number", "jsonPath": ".spec.qpuSeconds"},
        {"name": "Sessions", "type": "integer", "jsonPath": ".spec.sessions"},
        {"name": "Used-QPU-s", "type": "number", "jsonPath": ".status.used.qpuSeconds"},
        {"name": "Used-Sessions", "type": "integer", "jsonPath": ".status.used.sessions"},
        {"name": "Spent", "type": "boolean", "jsonPath": ".status.spent"},
        {"name": "Resets", "type": "date", "jsonPath": ".status.resetsAt"},
        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    ]


def crd() -> dict[str, Any]:
    return definition(
        kind=BUDGET_KIND,
        plural=BUDGET_PLURAL,
        singular=SINGULAR,
        short_names=SHORT_NAMES,
        scope="Namespaced",
        schema=openapi_schema(),
        columns=printer_columns(),
        subresources={"status": {}},
    )
