"""Kubelet API package qpu_k8s.proto.dra_health."""
