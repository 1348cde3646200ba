// Command kbs-client attests to a KBS and fetches resources, following
// Trustee's kbs-client.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/cocoon-containers/cocoon/kbs-client/kbscli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := kbscli.Client(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "kbs-client:", err)
		os.Exit(1)
	}
}
