"""The environment the chart gives a component, so a benchmark measures it as deployed."""

from __future__ import annotations

from testsupport import packaging


def chart_env(component: str) -> dict[str, str]:
    """What the chart (default values) sets in ``component``'s environment that shapes its
    runtime: the allocator's and the interpreter's settings (``MALLOC_*``, ``PYTHON*``,
    ``TOKIO_*``)."""
    for obj in packaging.workloads(packaging.objects(packaging.render(include_crds=False))):
        if packaging.component(obj) == component:
            env = obj["spec"]["template"]["spec"]["containers"][0].get("env") or []
            return {
                e["name"]: str(e["value"])
                for e in env
                if "value" in e and e["name"].startswith(("MALLOC_", "PYTHON", "TOKIO_"))
            }
    raise LookupError(f"the chart renders no {component} workload")
