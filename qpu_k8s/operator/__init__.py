"""qpu_k8s.operator: the QuantumBackend operator (Kopf)."""
