// Command fakeshim is the Cocoon shim with the test launcher: every sandbox
// is a fake agent inside the shim that runs container processes on the host,
// chrooted into their rootfs. The containerd harness installs it as
// containerd-shim-cocoon-v2 when no real agent binary is available.
package main

import (
	"github.com/cocoon-containers/cocoon/shim/config"
	"github.com/cocoon-containers/cocoon/shim/sandbox"
	"github.com/cocoon-containers/cocoon/shim/shimtest"
	"github.com/cocoon-containers/cocoon/shim/task"
)

func main() {
	l := &shimtest.Launcher{Chroot: true}
	task.Main(func(config.Config) (sandbox.Launcher, error) { return l, nil })
}
