// Command cocoon-policy evaluates agent policies offline:
//
//	cocoon-policy eval --policy FILE --request FILE [--kind CreateContainerRequest]
//
// It prints the decision, the policy's prints and the rules that evaluated
// false, and exits 1 on a denial. cocoon-agent will offer the same as
// "cocoon-agent policy eval".
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/cocoon-containers/cocoon/agent/policy"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != "eval" {
		fmt.Fprintln(os.Stderr, "usage: cocoon-policy eval --policy FILE --request FILE [--kind CreateContainerRequest]")
		os.Exit(2)
	}
	if err := policy.EvalCommand(context.Background(), os.Args[2:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "cocoon-policy:", err)
		os.Exit(1)
	}
}
