"""<ZZ> and <XX> of a Bell pair on an IBM QPU through QRMI's EstimatorV2, as a scheduled job.

Same env contract as ``qiskit_bell.py``. Both expectation values are 1 for a perfect Bell
pair; the emulator's calibrated noise pulls them a little below. The last stdout line is
JSON, e.g. ``{"resource": "fake_nairobi", "evs": {"ZZ": 0.93, "XX": 0.91}}``.

    python qpu_k8s/examples/qiskit_estimator.py [--precision P]
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", type=float, default=0.02)
    args = parser.parse_args(argv)

    from qiskit import QuantumCircuit
    from qiskit.quantum_info import SparsePauliOp
    from qiskit.transpiler import generate_preset_pass_manager
    from qrmi import ResourceType
    from qrmi.primitives import QRMIService
    from qrmi.primitives.ibm import EstimatorV2, get_backend

    ibm_types = (ResourceType.IBMQuantumComputeService, ResourceType.IBMQiskitRuntimeService)
    resources = [r for r in QRMIService().resources() if r.resource_type() in ibm_types]
    if not resources:
        print("no IBM quantum resource in QRMI_JOB_QPU_RESOURCES", file=sys.stderr)
        return 1
    qpu = resources[0]

    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    isa = generate_preset_pass_manager(optimization_level=1, backend=get_backend(qpu)).run(bell)
    labels = ["ZZ", "XX"]
    observables = [SparsePauliOp(label).apply_layout(isa.layout) for label in labels]

    job = EstimatorV2(qpu).run([(isa, observables)], precision=args.precision)
    evs = [float(v) for v in job.result()[0].data.evs]
    print(json.dumps({"resource": qpu.resource_id(), "evs": dict(zip(labels, evs, strict=True))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
