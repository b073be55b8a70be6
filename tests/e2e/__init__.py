"""End-to-end tier: the whole product on the real Kubernetes 1.37 of hack/local-cluster."""
