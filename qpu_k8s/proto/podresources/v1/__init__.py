"""Kubelet API package qpu_k8s.proto.podresources.v1."""
