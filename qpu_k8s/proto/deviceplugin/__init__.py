"""Kubelet API package qpu_k8s.proto.deviceplugin."""
