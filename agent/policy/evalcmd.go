package policy

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// EvalCommand implements `cocoon-agent policy eval --policy FILE --request
// FILE [--kind Entry]`: it evaluates one recorded request (the Kata JSON
// input, as the agent logs it) and prints the decision, the policy's prints
// and the rules that evaluated false. args exclude "policy"; a leading
// "eval" is optional, so "cocoon-agent policy eval ..." and a separate
// command that already consumed "eval" pass their arguments unchanged.
func EvalCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("policy eval", flag.ContinueOnError)
	fs.SetOutput(stderr)
	policyPath := fs.String("policy", "", "Rego policy file (package agent_policy)")
	requestPath := fs.String("request", "", "request as Kata policy input JSON, or a Kata policy log line {\"kind\", \"request\"}")
	kind := fs.String("kind", "CreateContainerRequest", "entry point: the request message name")
	if len(args) > 0 && args[0] == "eval" {
		args = args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *policyPath == "" || *requestPath == "" || fs.NArg() != 0 {
		return errors.New("usage: policy eval --policy FILE --request FILE [--kind CreateContainerRequest]")
	}
	text, err := os.ReadFile(*policyPath)
	if err != nil {
		return err
	}
	reqBytes, err := os.ReadFile(*requestPath)
	if err != nil {
		return err
	}
	var input map[string]any
	dec := json.NewDecoder(strings.NewReader(string(reqBytes)))
	dec.UseNumber()
	if err := dec.Decode(&input); err != nil {
		return fmt.Errorf("request %s: %w", *requestPath, err)
	}
	// A line of the Kata agent's policy log ({"kind": ..., "request": ...})
	// carries its own entry point; --kind still wins when given.
	if rec, ok := input["request"].(map[string]any); ok && len(input) == 2 {
		if k, ok := input["kind"].(string); ok {
			input = rec
			kindSet := false
			fs.Visit(func(f *flag.Flag) { kindSet = kindSet || f.Name == "kind" })
			if !kindSet {
				*kind = k
			}
		}
	}
	p, err := compile(ctx, string(text))
	if err != nil {
		return err
	}
	d, err := p.decide(ctx, *kind, input)
	if err != nil {
		return err
	}
	verdict := "denied"
	if d.Allowed {
		verdict = "allowed"
	} else if !d.Enforced {
		verdict = "denied (allowed anyway: AllowRequestsFailingPolicy)"
	}
	fmt.Fprintf(stdout, "entry:         %s\n", d.Entry)
	fmt.Fprintf(stdout, "decision:      %s\n", verdict)
	fmt.Fprintf(stdout, "policy sha256: %s\n", p.digest)
	for _, l := range d.Prints {
		fmt.Fprintf(stdout, "print:         %s\n", l)
	}
	if len(d.FailingRules) > 0 {
		fmt.Fprintf(stdout, "failing rules: %s\n", strings.Join(d.FailingRules, ", "))
	}
	if d.StateOps > 0 {
		fmt.Fprintf(stdout, "state ops:     %d\n", d.StateOps)
	}
	if !d.Allowed && d.Enforced {
		return ErrDenied
	}
	return nil
}

// ErrDenied is EvalCommand's result for a denied request.
var ErrDenied = errors.New("request denied by policy")
