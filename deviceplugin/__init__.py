"""qpu_k8s.deviceplugin"""
