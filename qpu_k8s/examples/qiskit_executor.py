"""A Bell pair through the ``executor`` program, sent by QRMI, as a scheduled job runs it.

qiskit-ibm-runtime 0.50 deprecated SamplerV2/EstimatorV2 for client-side primitives
(``executor_sampler.Sampler``) that turn pubs into a quantum program and run it with the
Runtime program ``executor``. Those primitives only take a qiskit-ibm-runtime backend or
session as their ``mode``, not a QRMI resource, and qrmi 0.26's own primitives still send
the ``sampler`` program. qrmi 0.26 does route ``program_id="executor"``, so this script does
the client-side primitive's three steps itself: prepare the program, send it through the
QRMI resource (the session the scheduler opened), post-process the result. The last
stdout line is JSON, e.g. ``{"resource": "fake_manila", "counts": {"00": 497, ...}}``.

    python examples/qiskit_executor.py [--shots N]

It uses two qiskit-ibm-runtime internals (``executor_sampler.prepare`` and the program's
``_semantic_role``) that may move between releases.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shots", type=int, default=1000)
    args = parser.parse_args(argv)

    from qiskit import QuantumCircuit
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime.decoders.executor.decoder import ExecutorResultDecoder
    from qiskit_ibm_runtime.decoders.executor_sampler.decoder import (
        ClientSideSamplerResultDecoder,
    )
    from qiskit_ibm_runtime.executor_sampler.prepare import prepare
    from qiskit_ibm_runtime.options_models.sampler import SamplerOptions
    from qiskit_ibm_runtime.quantum_program.params_converters import (
        QUANTUM_PROGRAM_PARAMS_CONVERTERS,
    )
    from qrmi import Payload, ResourceType, TaskStatus
    from qrmi.primitives import QRMIService
    from qrmi.primitives.ibm import get_backend

    ibm_types = (ResourceType.IBMQuantumComputeService, ResourceType.IBMQiskitRuntimeService)
    resources = [r for r in QRMIService().resources() if r.resource_type() in ibm_types]
    if not resources:
        print("no IBM quantum resource in QRMI_JOB_QPU_RESOURCES", file=sys.stderr)
        return 1
    qpu = resources[0]
    backend = get_backend(qpu)

    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    bell.measure_all()
    isa = generate_preset_pass_manager(optimization_level=1, backend=backend).run(bell)

    # 1. What executor_sampler.Sampler.run does before it submits.
    program, options = prepare([isa], SamplerOptions(), args.shots, add_tags=False, backend=backend)
    program._semantic_role = "sampler_v2"  # tells the post-processor what the items mean
    params = QUANTUM_PROGRAM_PARAMS_CONVERTERS["v2.0"].encoder(program, options)

    # 2. Submit through QRMI.
    task = qpu.task_start(
        Payload.QiskitPrimitive(input=params.model_dump_json(), program_id="executor")
    )
    while (status := qpu.task_status(task)) not in (
        TaskStatus.Completed,
        TaskStatus.Failed,
        TaskStatus.Cancelled,
    ):
        time.sleep(0.5)
    if status != TaskStatus.Completed:
        print(f"job {task} ended {status}:\n{qpu.task_logs(task)}", file=sys.stderr)
        return 1

    # 3. What the client-side primitive does with the result.
    program_result = ExecutorResultDecoder.decode(qpu.task_result(task).value)
    result = ClientSideSamplerResultDecoder.decode(program_result)
    counts = result[0].data.meas.get_counts()
    print(json.dumps({"resource": qpu.resource_id(), "job_id": task, "counts": counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
