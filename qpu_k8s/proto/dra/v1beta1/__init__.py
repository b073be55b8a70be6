"""Kubelet API package qpu_k8s.proto.dra.v1beta1."""
