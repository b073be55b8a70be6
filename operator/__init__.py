"""qpu_k8s.operator"""
