"""Kubelet API package qpu_k8s.proto.pluginregistration."""
