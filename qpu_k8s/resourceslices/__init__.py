"""qpu_k8s.resourceslices: DRA ResourceSlices and device attributes (node driver and operator)."""
