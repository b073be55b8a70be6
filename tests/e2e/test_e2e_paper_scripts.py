"""The paper's scripts in pods, unchanged, against the in-cluster emulator: the generated
``manifests/examples/jobs/paper-scripts.yaml`` (the README's DRA quick start) runs the
Qiskit script on a superconducting QPU and the Pulser script on a Pasqal one, each through
its own claim selected by technology, and both print Bell counts."""

from __future__ import annotations

import pytest

from testsupport import packaging
from testsupport import release as rel
from testsupport.cluster import LocalCluster, wait_until

from .test_e2e_deviceplugin import BELL_MIN_SHARE, bell_result, local_images, share

pytestmark = pytest.mark.cluster
JOB = packaging.MANIFESTS / "examples" / "jobs" / "paper-scripts.yaml"


def test_paper_job_runs_qiskit_and_pulser_on_their_qpus(
    local_cluster: LocalCluster, release: rel.Release, ns: str, emulator: rel.AdminClient
) -> None:
    local_cluster.apply(local_images(JOB.read_text()), "-n", ns)

    def finished() -> str | None:
        job = local_cluster.kubectl_json("-n", ns, "get", "job", "paper-scripts")
        for c in job.get("status", {}).get("conditions") or []:
            if c["type"] in ("Complete", "Failed") and c["status"] == "True":
                return str(c["type"])
        return None

    outcome = wait_until(finished, 600, "job/paper-scripts to finish", every=2.0)
    logs = {
        c: local_cluster.kubectl("-n", ns, "logs", "job/paper-scripts", "-c", c, check=False).stdout
        for c in ("qiskit", "pulser")
    }
    assert outcome == "Complete", logs
    qiskit, pulser = bell_result(logs["qiskit"]), bell_result(logs["pulser"])
    assert qiskit["resource"] in ("fake_manila", "fake_torino")
    assert share(qiskit["counts"], {"00", "11"}) > BELL_MIN_SHARE, qiskit  # type: ignore[arg-type]
    # Pulser: two atoms in blockade, a collective pi pulse: |01> + |10>.
    assert pulser["resource"] in ("FRESNEL", "EMU_FREE")
    assert share(pulser["counts"], {"01", "10"}) > 0.8, pulser  # type: ignore[arg-type]
    # The Pulser job ran at the emulator's Pasqal API, in the batch the script reported.
    pasqal_jobs = [
        j for j in emulator.jobs(str(pulser["resource"])) if j["batch_id"] == pulser["batch_id"]
    ]
    assert pasqal_jobs
    assert all(j["status"] == "completed" for j in pasqal_jobs), pasqal_jobs
    # One claim per container, made from the two templates for this pod.
    (pod,) = local_cluster.kubectl_json("-n", ns, "get", "pods", "-l", "job-name=paper-scripts")[
        "items"
    ]
    statuses = pod["status"]["resourceClaimStatuses"]
    assert sorted(s["name"] for s in statuses) == ["neutral-atom", "superconducting"]
