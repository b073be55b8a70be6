"""qpu-k8s: QPUs as first-class Kubernetes resources, over QRMI."""
