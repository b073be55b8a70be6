"""qpu_k8s.core: the shared domain every component imports (and that imports none of them)."""
