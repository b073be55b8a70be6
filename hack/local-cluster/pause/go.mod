module qpu.local/local-cluster/pause

go 1.26.0
