"""qpu_k8s.dra"""
