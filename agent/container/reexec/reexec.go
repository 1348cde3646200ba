// Package reexec runs libcontainer's container-init half from a package
// initializer. Every container process starts as "<agent binary> init";
// doing the work here, as soon as libcontainer itself is initialized,
// spares each container start the initializers of the rest of the agent
// (the policy engine's are the largest). Import it for its side effect
// from the agent's main package and from tests that start containers.
package reexec

import (
	"os"

	"github.com/opencontainers/runc/libcontainer"
	// nsenter's constructor joins the container's namespaces before the
	// Go runtime starts.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
)

func init() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		// Never returns: it execs the container's process or exits.
		libcontainer.Init()
	}
}
