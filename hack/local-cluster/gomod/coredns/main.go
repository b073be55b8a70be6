// Command coredns is CoreDNS with only the plugins the local cluster's DNS uses: the
// kubernetes plugin answers for cluster.local and the reverse zones; there is no forward
// plugin, so no query ever leaves the machine.
package main

import (
	"log"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// Execution order: the relative order of these names in upstream's plugin.cfg.
var directives = []string{"ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes"}

func main() {
	if err := dnsserver.SetDirectives(directives); err != nil {
		log.Fatal(err)
	}
	coremain.Run()
}
