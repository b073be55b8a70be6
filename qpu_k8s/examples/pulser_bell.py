"""Two entangled atoms on a Pasqal QPU through QRMI, as a scheduled job runs it.

Two atoms 5 um apart sit inside each other's Rydberg blockade, so a global pulse of area
pi (for the collective Rabi frequency sqrt(2)*Omega) leaves them in the Bell-like state
(|gr> + |rg>)/sqrt(2): the counts are about half "01" and half "10" ("1" = Rydberg).
The resource and its settings come from the QRMI env contract (``QRMI_JOB_QPU_RESOURCES``,
``{name}_QRMI_PASQAL_CLOUD_*``); the last stdout line is JSON with the counts.

    python qpu_k8s/examples/pulser_bell.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args(argv)

    from pulser import Pulse, Register, Sequence
    from qrmi.pulser import PulserQRMIConnection

    # With no argument the connection takes the one QRMI resource of this job.
    conn = PulserQRMIConnection()
    devices = conn.fetch_available_devices()
    if not devices:
        print("the QPU published no device specs", file=sys.stderr)
        return 1
    # An emulator resource may publish every device; prefer the one named like this job's.
    wanted = os.environ.get("QRMI_JOB_QPU_RESOURCES", "").split(",")[0]
    device_type = wanted if wanted in devices else next(iter(devices))
    device = devices[device_type]
    print(f"using {device_type} ({device.name})", file=sys.stderr)

    # A QPU places atoms in calibrated optical traps: its register must come from a layout.
    register = Register.from_coordinates([(0, 0), (5, 0)], prefix="q").with_automatic_layout(device)
    seq = Sequence(register, device)
    seq.declare_channel("rydberg", "rydberg_global")
    duration_us = 0.5
    omega = math.pi / (math.sqrt(2) * duration_us)  # rad/us: a collective pi pulse
    seq.add(Pulse.ConstantPulse(int(duration_us * 1000), omega, 0, 0), "rydberg")

    remote = conn.submit(seq, job_params=[{"runs": args.runs}], wait=True)
    counts = dict(remote.results[0].final_bitstrings)
    print(json.dumps({"resource": device_type, "batch_id": remote.batch_id, "counts": counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
