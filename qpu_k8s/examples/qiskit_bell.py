"""Bell pair on an IBM QPU through QRMI, written the way a Slurm or Kubernetes job runs it.

Everything comes from the environment the scheduler sets (the QRMI env contract):
``QRMI_JOB_QPU_RESOURCES``, ``QRMI_JOB_QPU_TYPES``, ``{name}_QRMI_IBM_QCS_*`` and
``{name}_QRMI_JOB_ACQUISITION_TOKEN`` (the session the scheduler opened). The script never
acquires or releases: the scheduler does. The last stdout line is JSON, e.g.
``{"resource": "fake_manila", "counts": {"00": 497, "11": 503}}``.

    python qpu_k8s/examples/qiskit_bell.py [--shots N] [--resource NAME]
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shots", type=int, default=1000)
    parser.add_argument(
        "--resource", default=None, help="resource name (default: the first IBM one)"
    )
    args = parser.parse_args(argv)

    from qiskit import QuantumCircuit
    from qiskit.transpiler import generate_preset_pass_manager
    from qrmi import ResourceType
    from qrmi.primitives import QRMIService
    from qrmi.primitives.ibm import SamplerV2, get_backend

    ibm_types = (ResourceType.IBMQuantumComputeService, ResourceType.IBMQiskitRuntimeService)
    resources = [r for r in QRMIService().resources() if r.resource_type() in ibm_types]
    if args.resource is not None:
        resources = [r for r in resources if r.resource_id() == args.resource]
    if not resources:
        print("no IBM quantum resource in QRMI_JOB_QPU_RESOURCES", file=sys.stderr)
        return 1
    qpu = resources[0]
    print(f"using {qpu.resource_id()} ({qpu.metadata()})", file=sys.stderr)

    backend = get_backend(qpu)
    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    bell.measure_all()
    isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(bell)

    job = SamplerV2(qpu, options={"default_shots": args.shots}).run([isa])
    counts = job.result()[0].data.meas.get_counts()
    print(json.dumps({"resource": qpu.resource_id(), "job_id": job.job_id(), "counts": counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
