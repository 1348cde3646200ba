// Command cocoon-kbs is the reference Key Broker Service.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/cocoon-containers/cocoon/kbs-client/kbscli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := kbscli.KBS(ctx, os.Args[1:], os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "cocoon-kbs:", err)
		os.Exit(1)
	}
}
