# This code is part of Qiskit.
#
# (C) Copyright 2025 Pasqal, IBM. All Rights Reserved.
#
# This code is licensed under the Apache License, Version 2.0. You may
# obtain a copy of this license in the LICENSE.txt file in the root directory
# of this source tree or at http://www.apache.org/licenses/LICENSE-2.0.
#
# Any modifications or derivative works of this code must retain this
# copyright notice, and modified files need to carry a notice indicating
# that they have been altered from the originals.
#
# Altered by qpu-k8s from the Pulser example of the paper (qiskit-community/spank-plugins,
# qrmi/examples/pulser_backend/pasqal/pulser_backend.py) so it runs on qrmi 0.26 and
# pulser 1.9; every change is marked "CHANGED" and explained in examples/paper/README.md.
"""The paper's Pulser example: four atoms, one global pulse, 1000 runs on a Pasqal QPU."""

# CHANGED (imports), for qrmi 0.26 and pulser 1.9:
# - qrmi.pulser_backend is gone: PulserQRMIConnection lives in qrmi.pulser, and pulser's own
#   QPUBackend drives it (there is no PulserQRMIBackend any more);
# - QRMIService comes from qrmi itself;
# - get_device came from a helper file next to the example; qrmi 0.26 ships it;
# - json is not needed any more (see the last line).
from dotenv import load_dotenv
from pulser import Pulse, QPUBackend, Register, Sequence
from pulser.backend.remote import JobParams
from qrmi import QRMIService
from qrmi.primitives.pasqal import get_device
from qrmi.pulser import PulserQRMIConnection

# Create QRMI
load_dotenv()
service = QRMIService()

resources = service.resources()
if len(resources) == 0:
    print("No quantum resource is available.")

# Randomly select QR
qrmi = resources[0]

qrmi_conn = PulserQRMIConnection(qrmi)

# Generate Pulser device
device = get_device(qrmi)

reg = Register(
    {
        "q0": (-2.5, -2.5),
        "q1": (2.5, -2.5),
        "q2": (-2.5, 2.5),
        "q3": (2.5, 2.5),
    }
    # CHANGED: a QPU (FRESNEL) only takes a register built from a trap layout.
).with_automatic_layout(device)

seq = Sequence(reg, device)
seq.declare_channel("rydberg", "rydberg_global")

pulse1 = Pulse.ConstantPulse(100, 2, 2, 0)

seq.add(pulse1, "rydberg")
seq.measure("ground-rydberg")

backend = QPUBackend(seq, qrmi_conn)  # CHANGED: was PulserQRMIBackend
result = backend.run([JobParams(runs=1000, variables=[])], wait=True)
# CHANGED: with pulser 1.9 a result is a pulser Results object, not a JSON string.
print(f"Results: {dict(result[0].final_bitstrings)}")
