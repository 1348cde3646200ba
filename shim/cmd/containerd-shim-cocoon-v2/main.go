// Command containerd-shim-cocoon-v2 is the containerd runtime v2 shim of
// Cocoon (runtime io.containerd.cocoon.v2): one VM per pod, containers run by
// the guest agent.
package main

import (
	"log/slog"

	"github.com/cocoon-containers/cocoon/shim/config"
	"github.com/cocoon-containers/cocoon/shim/sandbox"
	"github.com/cocoon-containers/cocoon/shim/task"
)

func main() {
	task.Main(func(cfg config.Config) (sandbox.Launcher, error) {
		return sandbox.NewLauncher(cfg, slog.Default())
	})
}
