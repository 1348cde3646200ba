// Command cocoon-demo runs the main job on this machine: a confidential pod
// in a QEMU guest (KVM when usable, TCG otherwise; simulated SNP) gets its
// secret from the reference KBS, exec into it is refused by its policy,
// and a pod launched with a modified policy gets nothing. `make demo`
// builds the binaries and runs it.
//
//	cocoon-demo [--agent bin/cocoon-agent] [--keep]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cocoon-containers/cocoon/e2e"
)

func main() {
	agent := flag.String("agent", "bin/cocoon-agent", "static cocoon-agent for the guest (make build)")
	keep := flag.Bool("keep", false, "keep the work directory (images, console logs)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *agent, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("   "+format+"\n", args...) }
func ok(format string, args ...any)   { fmt.Printf("OK "+format+"\n", args...) }

func run(ctx context.Context, agent string, keep bool) error {
	if _, err := os.Stat(agent); err != nil {
		return fmt.Errorf("agent binary: %w (run make build)", err)
	}
	dir, err := os.MkdirTemp("", "cocoon-demo-")
	if err != nil {
		return err
	}
	if keep {
		defer fmt.Println("work directory kept:", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	start := time.Now()
	step("building the guest: Debian kernel, initrd with cocoon-agent as /init (default policy: allow only SetPolicy),")
	step("and the workload's busybox tree as an erofs image with a dm-verity tree")
	env, err := e2e.Prepare(ctx, e2e.Options{AgentBinary: agent, Dir: dir})
	if err != nil {
		return err
	}
	defer env.Close()
	m := env.Manifest
	h := e2e.HostData(e2e.Policy)
	step("workload image root hash %s (on the measured kernel command line)", m.ReferenceValues.VerityRootHash)
	step("predicted MEASUREMENT (simulated SNP) %s", m.ReferenceValues.SimulatedMeasurement)
	step("pod policy sha256 = HOST_DATA %x (allows the pod, denies ExecProcess)", h)
	step("reference KBS on %s: default/key/1 only for that MEASUREMENT and HOST_DATA, no debug", env.KBSAddr())

	step("starting pod-good: QEMU, simulated SNP, HOST_DATA from its policy, network that reaches only the KBS")
	good, err := env.StartPod(ctx, "pod-good", e2e.Policy)
	if err != nil {
		return err
	}
	defer good.Close()
	if good.PolicyErr != nil {
		return fmt.Errorf("the agent refused the pod's policy: %w", good.PolicyErr)
	}
	ok("policy hash matched HOST_DATA: the agent checked sha256(policy) against a fresh SNP report and installed it")
	out, _, err := good.RunWorkload(ctx)
	if err != nil {
		return err
	}
	if out != e2e.Secret {
		return fmt.Errorf("the workload printed %q, not its secret", out)
	}
	ok("attestation succeeded: the workload read its secret from http://127.0.0.1:8006/cdh/resource/default/key/1: %q", out)
	if err := good.Exec(ctx); err == nil {
		return fmt.Errorf("exec was allowed")
	} else {
		ok("exec refused by policy: %s", oneLine(err.Error()))
	}

	step("starting pod-modified: the same pod with one line added to its policy (so another HOST_DATA)")
	bad, err := env.StartPod(ctx, "pod-modified", e2e.Policy+"\n# modified\n")
	if err != nil {
		return err
	}
	defer bad.Close()
	out, _, err = bad.RunWorkload(ctx)
	if err != nil {
		return err
	}
	if strings.Contains(out, e2e.Secret) {
		return fmt.Errorf("the modified pod got the secret")
	}
	ok("a pod launched with a modified policy got no secret: %s", oneLine(out))

	for _, p := range []*e2e.Pod{good, bad} {
		if _, err := p.Stop(ctx); err != nil {
			return err
		}
		if err := p.Close(); err != nil {
			return err
		}
	}
	env.Close()
	ok("everything stopped: VMs powered off by their agents, state removed (%s)", time.Since(start).Round(time.Second))
	return nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
