// Command cocoon-rootfs builds Cocoon guest images and dm-verity hash trees.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/cocoon-containers/cocoon/rootfs/rootfscli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := rootfscli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "cocoon-rootfs:", err)
		os.Exit(1)
	}
}
