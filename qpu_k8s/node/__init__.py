"""qpu_k8s.node: the node-agent plumbing both kubelet plugins use."""
