"""qpu_k8s.proto"""
