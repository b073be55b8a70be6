"""Least-privilege RBAC: every rule the chart can render, listed one verb per test case.

``pytest -v tests/packaging/test_chart_rbac.py`` prints the listing
(``test_rule_is_used[<component> <Kind> <group>/<resource> <verb>]``). Each verb must have an
entry in ``USES`` that names the code calling it, and that code must still be there; a
wildcard, a non-resource URL, an escalation verb or a rule without a comment fails.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest

from testsupport import packaging, tools

# Value sets that together switch on every optional rule.
RBAC_VALUE_SETS = ("custom", "emulator")


@dataclass(frozen=True)
class Use:
    """Why a verb is granted: every (file, regex) must match; ``absent`` must not."""

    why: str
    evidence: tuple[tuple[str, str], ...]
    absent: tuple[tuple[str, str], ...] = ()


def _kopf_handles(what: str) -> tuple[str, str]:
    return ("operator/handlers.py", what)


KOPF_HANDLERS = _kopf_handles(r"@kopf\.on\.(resume|create|update|delete)\(\*backends")
SLICES = "resourceslices/publish.py"


def _kueue_events(plural: str) -> tuple[str, str]:
    return _kopf_handles(rf'kopf\.on\.event\(\s*KUEUE_GROUP,\s*KUEUE_VERSION,\s*"{plural}"')


KUEUE_APPLY = ("operator/kube.py", r"def apply_kueue_status")

# (component, apiGroup, resource, verb) -> the code that needs it.
USES: dict[tuple[str, str, str, str], Use] = {
    **{
        ("operator", "kueue.x-k8s.io", plural, verb): Use(
            f"Kopf event handler on Kueue {plural} (the AdmissionCheck); Kopf lists first",
            (_kueue_events(plural),),
        )
        for plural in ("workloads", "admissionchecks", "resourceflavors")
        for verb in ("list", "watch")
    },
    **{
        ("operator", "quantum.example.com", plural, verb): Use(
            f"Kopf event handler on {plural} (budgets); Kube.list_usage lists the records",
            (
                _kopf_handles(rf"kopf\.on\.event\(API_GROUP,\s*API_VERSION,\s*{const}"),
                ("operator/kube.py", r"list_namespaced_custom_object,\s*API_GROUP"),
            ),
        )
        for plural, const in (
            ("quantumbudgets", "BUDGET_PLURAL"),
            ("quantumusages", "USAGE_PLURAL"),
        )
        for verb in ("list", "watch")
    },
    ("operator", "quantum.example.com", "quantumbudgets/status", "patch"): Use(
        "Kube.patch_budget_status",
        (("operator/kube.py", r"patch_namespaced_custom_object_status,\s*API_GROUP"),),
    ),
    ("operator", "kueue.x-k8s.io", "workloads/status", "patch"): Use(
        "Kube.apply_kueue_status: our entry of status.admissionChecks",
        (KUEUE_APPLY, ("operator/controller.py", r'"workload": "workloads"')),
    ),
    ("operator", "kueue.x-k8s.io", "admissionchecks/status", "patch"): Use(
        "Kube.apply_kueue_status: the Active condition of our AdmissionChecks",
        (KUEUE_APPLY, ("operator/controller.py", r'"admissioncheck": "admissionchecks"')),
    ),
    ("operator", "quantum.example.com", "quantumbackends", "list"): Use(
        "Kopf lists before watching; Kube.list_backends renders the node config",
        (KOPF_HANDLERS, ("operator/kube.py", r"list_cluster_custom_object,\s*API_GROUP")),
    ),
    ("operator", "quantum.example.com", "quantumbackends", "watch"): Use(
        "Kopf watches the resource its handlers are registered for", (KOPF_HANDLERS,)
    ),
    ("operator", "quantum.example.com", "quantumbackends", "patch"): Use(
        "Kopf's finalizer and annotation progress storage are patched onto the object",
        (
            ("operator/handlers.py", r"persistence\.finalizer\s*="),
            ("operator/handlers.py", r"AnnotationsProgressStorage"),
        ),
    ),
    ("operator", "quantum.example.com", "quantumbackends/status", "patch"): Use(
        "Kube.patch_backend_status",
        (("operator/kube.py", r"patch_cluster_custom_object_status"),),
    ),
    ("operator", "apiextensions.k8s.io", "customresourcedefinitions", "list"): Use(
        "Kopf's resource scanning (kept on: settings.scanning.disabled is not set)",
        (("operator/cli.py", r"kopf\.operator\("),),
        absent=(("operator/handlers.py", r"scanning\.disabled\s*=\s*True"),),
    ),
    ("operator", "apiextensions.k8s.io", "customresourcedefinitions", "watch"): Use(
        "Kopf's resource scanning watches CRDs",
        (("operator/cli.py", r"kopf\.operator\("),),
        absent=(("operator/handlers.py", r"scanning\.disabled\s*=\s*True"),),
    ),
    ("operator", "", "events", "create"): Use(
        "Kube.create_event in 'default', the only namespace the apiserver accepts Events "
        "about cluster-scoped objects in",
        (
            ("operator/kube.py", r"create_namespaced_event"),
            ("operator/controller.py", r'EVENT_NAMESPACE = "default"'),
            ("operator/controller.py", r"create_event\(EVENT_NAMESPACE"),
        ),
    ),
    ("operator", "resource.k8s.io", "resourceslices", "list"): Use(
        "the shared-slice writer lists every pool once, then writes only differences",
        (("operator/slices.py", r"custom\.list_cluster_custom_object"),),
    ),
    ("operator", "resource.k8s.io", "resourceslices", "create"): Use(
        "the shared-slice writer creates missing slices",
        (("operator/slices.py", r"custom\.create_cluster_custom_object"),),
    ),
    ("operator", "resource.k8s.io", "resourceslices", "update"): Use(
        "the shared-slice writer replaces changed slices",
        (("operator/slices.py", r"custom\.replace_cluster_custom_object"),),
    ),
    ("operator", "resource.k8s.io", "resourceslices", "delete"): Use(
        "the shared-slice writer deletes the slices of removed backends",
        (("operator/slices.py", r"custom\.delete_cluster_custom_object"),),
    ),
    ("operator", "resource.k8s.io", "resourceclaims", "list"): Use(
        "Kube.list_claims; Kopf lists before watching",
        (("operator/kube.py", r"list_cluster_custom_object,\s*RESOURCE_GROUP"),),
    ),
    ("operator", "resource.k8s.io", "resourceclaims", "watch"): Use(
        "Kopf event handler on the operator's shared claims",
        (
            _kopf_handles(
                r'kopf\.on\.event\(\s*RESOURCE_GROUP,\s*RESOURCE_VERSION,\s*"resourceclaims"'
            ),
        ),
    ),
    ("operator", "resource.k8s.io", "resourceclaims", "create"): Use(
        "Kube.create_claim",
        (("operator/kube.py", r"create_namespaced_custom_object,\s*RESOURCE_GROUP"),),
    ),
    ("operator", "resource.k8s.io", "resourceclaims", "delete"): Use(
        "Kube.delete_claim",
        (("operator/kube.py", r"delete_namespaced_custom_object,\s*RESOURCE_GROUP"),),
    ),
    ("operator", "", "namespaces", "list"): Use(
        "Kube.list_namespaces; Kopf lists before watching",
        (("operator/kube.py", r"core\.list_namespace\b"),),
    ),
    ("operator", "", "namespaces", "watch"): Use(
        "Kopf event handler on namespaces",
        (_kopf_handles(r'kopf\.on\.event\("", "v1", "namespaces"'),),
    ),
    ("operator", "", "secrets", "get"): Use(
        "Kube.secret_data reads a backend's credentialsSecretRef",
        (("operator/kube.py", r"core\.read_namespaced_secret"),),
    ),
    ("operator", "", "configmaps", "get"): Use(
        "Kube.read_config_map", (("operator/kube.py", r"core\.read_namespaced_config_map"),)
    ),
    ("operator", "", "configmaps", "create"): Use(
        "Kube.write_config_map, first write",
        (("operator/kube.py", r"core\.create_namespaced_config_map"),),
    ),
    ("operator", "", "configmaps", "update"): Use(
        "Kube.write_config_map, later writes",
        (("operator/kube.py", r"core\.replace_namespaced_config_map"),),
    ),
    ("dra", "resource.k8s.io", "resourceclaims", "get"): Use(
        "NodePrepareResources reads the claim's allocation",
        (("dra/claims.py", r"get_namespaced_custom_object"),),
    ),
    ("dra", "resource.k8s.io", "resourceclaims", "list"): Use(
        "acquire before bind: the claim watcher relists every claim (no field selector exists "
        "for an allocation's pool)",
        (("dra/binding.py", r"custom\.list_cluster_custom_object\(\s*GROUP"),),
    ),
    ("dra", "resource.k8s.io", "resourceclaims", "watch"): Use(
        "acquire before bind: the claim watcher follows claims allocated to the node's pool",
        (("dra/binding.py", r"watch\.Watch\("), ("dra/agent.py", r"ClaimWatcher\(")),
    ),
    ("dra", "resource.k8s.io", "resourceclaims/status", "patch"): Use(
        "the claim status writer applies status.devices after a prepare",
        (("dra/claims.py", r"patch_namespaced_custom_object_status"),),
    ),
    ("dra", "resource.k8s.io", "resourceclaims/driver", "associated-node:patch"): Use(
        "status.devices of claims allocated to the driver's node (1.36+ authorization)",
        (("dra/claims.py", r"patch_namespaced_custom_object_status"),),
    ),
    ("dra", "resource.k8s.io", "resourceclaims/driver", "arbitrary-node:patch"): Use(
        "status.devices of claims on shared pools, which name no single node",
        (("dra/claims.py", r"patch_namespaced_custom_object_status"),),
    ),
    ("dra", "resource.k8s.io", "resourceslices", "list"): Use(
        "SlicePublisher reconciles the node's pool",
        (("dra/agent.py", r"SlicePublisher\("), (SLICES, r"list_cluster_custom_object")),
    ),
    ("dra", "resource.k8s.io", "resourceslices", "watch"): Use(
        "the driver republishes at once when its slices are changed or deleted",
        (("dra/slicesync.py", r"publisher\.watch\("), (SLICES, r"watch\.Watch\(")),
    ),
    ("dra", "resource.k8s.io", "resourceslices", "create"): Use(
        "the shared-slice writer creates missing slices",
        (("dra/agent.py", r"SlicePublisher\("), (SLICES, r"create_cluster_custom_object")),
    ),
    ("dra", "resource.k8s.io", "resourceslices", "update"): Use(
        "the shared-slice writer replaces changed slices",
        (("dra/agent.py", r"SlicePublisher\("), (SLICES, r"replace_cluster_custom_object")),
    ),
    ("dra", "resource.k8s.io", "resourceslices", "delete"): Use(
        "SlicePublisher deletes slices it no longer needs",
        (("dra/agent.py", r"SlicePublisher\("), (SLICES, r"delete_cluster_custom_object")),
    ),
    ("dra", "", "nodes", "get"): Use(
        "node labels and the owner reference of the node's slices",
        (("dra/agent.py", r"read_node\("), ("node/labels.py", r"get\(f\"/api/v1/nodes/")),
    ),
    ("dra", "", "secrets", "get"): Use(
        "per-claim credentials (QPUClaimParameters.credentialsSecretRef), opt-in",
        (("dra/claims.py", r"/api/v1/namespaces/.*/secrets/"),),
    ),
    ("device-plugin", "", "configmaps", "list"): Use(
        "the operator's node config, listed through the apiserver",
        (
            ("deviceplugin/agent.py", r"ConfigFeed\("),
            ("node/configfeed.py", r"follow\(\s*self\.core,\s*self\.path"),
            ("node/follow.py", r"core\.get\(path"),
        ),
    ),
    ("device-plugin", "", "configmaps", "watch"): Use(
        "the operator's node config, followed for changes",
        (
            ("deviceplugin/agent.py", r"ConfigFeed\("),
            ("node/configfeed.py", r"follow\(\s*self\.core,\s*self\.path"),
            ("node/follow.py", r"events = core\.watch\("),
        ),
    ),
    ("dra", "", "configmaps", "list"): Use(
        "the operator's node config, listed through the apiserver",
        (
            ("dra/agent.py", r"ConfigFeed\("),
            ("node/configfeed.py", r"follow\(\s*self\.core,\s*self\.path"),
            ("node/follow.py", r"core\.get\(path"),
        ),
    ),
    ("dra", "", "configmaps", "watch"): Use(
        "the operator's node config, followed for changes",
        (
            ("dra/agent.py", r"ConfigFeed\("),
            ("node/configfeed.py", r"follow\(\s*self\.core,\s*self\.path"),
            ("node/follow.py", r"events = core\.watch\("),
        ),
    ),
    ("device-plugin", "", "pods", "list"): Use(
        "the node's pods, to release at once what an ended container held",
        (
            ("deviceplugin/agent.py", r"NodePods\("),
            ("node/pods.py", r"follow\(\s*self\.core,\s*PODS"),
            ("node/follow.py", r"core\.get\(path"),
        ),
    ),
    ("device-plugin", "", "pods", "watch"): Use(
        "the node's pods, followed for changes",
        (
            ("deviceplugin/agent.py", r"NodePods\("),
            ("node/pods.py", r"follow\(\s*self\.core,\s*PODS"),
            ("node/follow.py", r"events = core\.watch\("),
        ),
    ),
    ("device-plugin", "", "nodes", "get"): Use(
        "node labels for node-bound backends",
        (("deviceplugin/agent.py", r"read_node\("), ("node/labels.py", r"get\(f\"/api/v1/nodes/")),
    ),
    ("dra", "", "pods", "get"): Use(
        "the pod of a usage record: its controller and ServiceAccount",
        (("dra/agent.py", r"UsageReporter\("), ("node/usage.py", r"/api/v1/namespaces/.*/pods/")),
    ),
    ("dra", "quantum.example.com", "quantumusages", "create"): Use(
        "one QuantumUsage per released acquisition",
        (
            ("dra/agent.py", r"UsageReporter\("),
            ("node/usage.py", r"core\.create\(path, usage_object"),
        ),
    ),
    ("dra", "", "events", "create"): Use(
        "the QPUUsageRecorded Event on each new usage record",
        (("dra/agent.py", r"UsageReporter\("), ("node/usage.py", r"/api/v1/namespaces/.*/events")),
    ),
    ("device-plugin", "", "pods", "get"): Use(
        "the pod of a usage record: its controller and ServiceAccount",
        (
            ("deviceplugin/agent.py", r"UsageReporter\("),
            ("node/usage.py", r"/api/v1/namespaces/.*/pods/"),
        ),
    ),
    ("device-plugin", "quantum.example.com", "quantumusages", "create"): Use(
        "one QuantumUsage per released acquisition",
        (
            ("deviceplugin/agent.py", r"UsageReporter\("),
            ("node/usage.py", r"core\.create\(path, usage_object"),
        ),
    ),
    ("device-plugin", "", "events", "create"): Use(
        "the QPUUsageRecorded Event on each new usage record",
        (
            ("deviceplugin/agent.py", r"UsageReporter\("),
            ("node/usage.py", r"/api/v1/namespaces/.*/events"),
        ),
    ),
}

FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate", "deletecollection"}


@cache
def _rendered() -> tuple[list[dict[str, Any]], str]:
    objs: list[dict[str, Any]] = []
    text = ""
    for name in RBAC_VALUE_SETS:
        out = packaging.render(packaging.value_set(name).values, include_crds=False)
        objs += packaging.objects(out)
        text += out
    return objs, text


def roles() -> list[dict[str, Any]]:
    return [o for o in _rendered()[0] if o["kind"] in {"Role", "ClusterRole"}]


def granted() -> dict[tuple[str, str, str, str], list[str]]:
    """(component, group, resource, verb) -> where it is granted (Kind/name)."""
    out: dict[tuple[str, str, str, str], list[str]] = {}
    for role in roles():
        comp = packaging.component(role)
        for rule in role.get("rules", []):
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for verb in rule.get("verbs", []):
                        key = (comp, group, resource, verb)
                        out.setdefault(key, []).append(f"{role['kind']}/{role['metadata']['name']}")
    return out


def _listing() -> list[Any]:
    """One case per granted verb; a single failing case when the chart cannot be rendered."""
    try:
        keys = sorted(granted())
    except (tools.ToolError, packaging.RenderError) as err:
        return [pytest.param(f"cannot render the chart: {err}", id="render-failed")]
    return [pytest.param(k, id=f"{k[0]} {k[1] or 'core'}/{k[2]} {k[3]}") for k in keys]


def _evidence_problems(key: tuple[str, str, str, str], use: Use) -> list[str]:
    problems = []
    for rel, pattern in use.evidence:
        path = packaging.REPO / "qpu_k8s" / rel
        if not path.exists():
            problems.append(f"{rel} does not exist")
        elif not re.search(pattern, path.read_text()):
            problems.append(f"{rel} no longer matches {pattern!r}")
    for rel, pattern in use.absent:
        path = packaging.REPO / "qpu_k8s" / rel
        if path.exists() and re.search(pattern, path.read_text()):
            problems.append(f"{rel} matches {pattern!r}, so the verb is not needed")
    return [f"{key}: {p} ({use.why})" for p in problems]


@pytest.mark.parametrize("key", _listing())
def test_rule_is_used(key: tuple[str, str, str, str] | str) -> None:
    assert not isinstance(key, str), key
    use = USES.get(key)
    assert use is not None, f"{key} is granted by {granted()[key]} but no code is known to use it"
    problems = _evidence_problems(key, use)
    assert not problems, "\n".join(problems)


def test_no_stale_justifications(helm_bin: Any) -> None:
    stale = sorted(set(USES) - set(granted()))
    assert not stale, f"USES lists verbs the chart no longer grants: {stale}"


def test_no_wildcards_nonresource_urls_or_escalation(helm_bin: Any) -> None:
    problems = []
    for role in roles():
        where = f"{role['kind']}/{role['metadata']['name']}"
        for rule in role.get("rules", []):
            if "nonResourceURLs" in rule:
                problems.append(f"{where}: nonResourceURLs")
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                if any("*" in str(v) for v in rule.get(field, [])):
                    problems.append(f"{where}: wildcard in {field}")
            if FORBIDDEN_VERBS & set(rule.get("verbs", [])):
                problems.append(f"{where}: {FORBIDDEN_VERBS & set(rule['verbs'])}")
            if "secrets" in rule.get("resources", []) and set(rule["verbs"]) - {"get"}:
                problems.append(f"{where}: secrets may only be read one by one (get)")
        if "aggregationRule" in role:
            problems.append(f"{where}: aggregationRule")
    assert not problems, "\n".join(problems)


def test_every_rule_has_a_justifying_comment(helm_bin: Any) -> None:
    text = _rendered()[1]
    lines = text.splitlines()
    uncommented = []
    for i, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:") and "rules:" in "\n".join(
            lines[max(0, i - 40) : i]
        ):
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("#"):
                j -= 1
            if j == i - 1:
                uncommented.append(f"line {i + 1}: {line.strip()} {lines[i + 1].strip()}")
    assert not uncommented, "rules without a comment above them:\n" + "\n".join(uncommented)


def test_each_service_account_is_bound_only_to_its_own_roles(helm_bin: Any) -> None:
    objs = _rendered()[0]
    for binding in (o for o in objs if o["kind"] in {"RoleBinding", "ClusterRoleBinding"}):
        comp = packaging.component(binding)
        (subject,) = binding["subjects"]
        assert subject["kind"] == "ServiceAccount"
        assert subject["name"].endswith(f"-{comp}"), binding["metadata"]["name"]
        assert binding["roleRef"]["name"].startswith(subject["name"])


def test_emulator_has_no_api_access(renders: dict[str, list[dict[str, Any]]]) -> None:
    objs = renders["emulator"]
    (sa,) = [
        o for o in objs if o["kind"] == "ServiceAccount" and packaging.component(o) == "emulator"
    ]
    assert sa["automountServiceAccountToken"] is False
    assert not [
        o for o in objs if o["kind"].endswith("Binding") and packaging.component(o) == "emulator"
    ]


def test_secret_access_is_opt_in(renders: dict[str, list[dict[str, Any]]]) -> None:
    """By default only the operator reads Secrets, and only in its own namespace."""
    for obj in renders["defaults"]:
        if obj["kind"] not in {"Role", "ClusterRole"}:
            continue
        for rule in obj["rules"]:
            if "secrets" in rule["resources"]:
                assert obj["kind"] == "Role", obj["metadata"]["name"]
                assert packaging.component(obj) == "operator"


def _dra_status_rules(values: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The DRA ClusterRole's rules on claim status, and the driver's QPU_K8S_CLAIM_STATUS."""
    objs = packaging.objects(packaging.render(values, include_crds=False))
    (role,) = [o for o in objs if o["kind"] == "ClusterRole" and packaging.component(o) == "dra"]
    rules = [
        r for r in role["rules"] if any(x.startswith("resourceclaims/") for x in r["resources"])
    ]
    (ds,) = [o for o in objs if o["kind"] == "DaemonSet" and packaging.component(o) == "dra"]
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    return rules, env["QPU_K8S_CLAIM_STATUS"]


def test_claim_status_rules_follow_the_values(helm_bin: Any) -> None:
    """Patch on the status subresource, the node-aware verbs scoped to our driver name;
    arbitrary-node only with sharedPools; nothing (and the driver told so) when disabled."""
    rules, env = _dra_status_rules({})
    assert env == "true"
    status, driver = rules
    assert (status["resources"], status["verbs"]) == (["resourceclaims/status"], ["patch"])
    assert driver["resources"] == ["resourceclaims/driver"]
    assert driver["resourceNames"] == ["qpu.quantum.example.com"]
    assert driver["verbs"] == ["associated-node:patch", "arbitrary-node:patch"]
    rules, _ = _dra_status_rules({"dra": {"claimStatus": {"sharedPools": False}}})
    assert rules[1]["verbs"] == ["associated-node:patch"]
    rules, env = _dra_status_rules({"dra": {"claimStatus": {"enabled": False}}})
    assert (rules, env) == ([], "false")
