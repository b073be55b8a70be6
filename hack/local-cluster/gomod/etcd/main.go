// Command etcd runs the etcd server of the required go.etcd.io/etcd/server/v3 release.
// Upstream's own main package cannot be built with `go install pkg@version` because
// server/go.mod replaces its sibling modules with relative paths.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
