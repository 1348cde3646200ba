// Command cocoon-demo runs the main job on this machine: a private
// containerd with Cocoon's runtime runs a confidential pod in a QEMU guest
// (KVM when usable, TCG otherwise; simulated SNP); the pod's image reaches
// the guest as a dm-verity layer its policy names; the workload gets its
// secret from the reference KBS; exec into it is refused by its policy;
// and a pod launched with a modified policy gets nothing. `make demo`
// builds the binaries and runs it.
//
//	cocoon-demo [--bin bin] [--keep]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cocoon-containers/cocoon/e2e"
)

func main() {
	bin := flag.String("bin", "bin", "directory with containerd-shim-cocoon-v2 and cocoon-agent (make build)")
	keep := flag.Bool("keep", false, "keep the work directory (images, logs)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("   "+format+"\n", args...) }
func ok(format string, args ...any)   { fmt.Printf("OK "+format+"\n", args...) }

func run(ctx context.Context, bin string, keep bool) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	for _, f := range []string{"containerd-shim-cocoon-v2", "cocoon-agent"} {
		if _, err := os.Stat(filepath.Join(bin, f)); err != nil {
			return fmt.Errorf("%w (run make build)", err)
		}
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
	step("starting a private containerd with the runtime io.containerd.cocoon.v2 (QEMU, simulated SNP, no shared directories)")
	step("building the guest: Debian kernel, initrd with cocoon-agent as /init (default policy: allow only SetPolicy)")
	cl, err := e2e.StartCluster(ctx, dir, bin)
	if err != nil {
		return err
	}
	defer cl.Close()
	step("predicted MEASUREMENT (simulated SNP) %s", cl.Manifest.ReferenceValues.SimulatedMeasurement)
	step("workload image: busybox, %d layers, each a dm-verity layer whose root hash the pod policy names (bottom first: %s)", len(cl.LayerHashes), strings.Join(cl.LayerHashes, ", "))
	step("pod policy sha256 = HOST_DATA %x (that image only, no exec)", cl.HostData)
	step("reference KBS on loopback: default/key/1 only for that MEASUREMENT and HOST_DATA, no debug")

	step("ctr run pod-good with the policy annotation: the shim launches the VM, SetPolicy, network, CreateSandbox, the container")
	out, err := cl.RunWorkload(ctx, "pod-good", cl.Policy)
	if err != nil {
		return err
	}
	ok("policy hash matched HOST_DATA: the agent checked sha256(policy) against a fresh SNP report before installing it")
	if out != e2e.Secret {
		return fmt.Errorf("the workload printed %q, not its secret", out)
	}
	ok("attestation succeeded: the workload read its secret from http://127.0.0.1:8006/cdh/resource/default/key/1: %q", out)

	if err := cl.StartIdle(ctx, "pod-idle", cl.Policy); err != nil {
		return err
	}
	err = cl.Exec(ctx, "pod-idle")
	cl.Remove(ctx, "pod-idle")
	if err == nil {
		return fmt.Errorf("exec was allowed")
	}
	ok("exec refused by policy: %s", oneLine(err.Error()[strings.LastIndex(err.Error(), "ctr:"):]))

	step("ctr run pod-modified: the same pod with one line added to its policy (so another HOST_DATA)")
	out, err = cl.RunWorkload(ctx, "pod-modified", cl.Policy+"\n# modified\n")
	if err != nil {
		return err
	}
	if strings.Contains(out, e2e.Secret) {
		return fmt.Errorf("the modified pod got the secret")
	}
	ok("a pod launched with a modified policy got no secret: %s", oneLine(out))
	cl.Close()
	ok("everything stopped: pods deleted, VMs powered off, containerd and the KBS stopped (%s)", time.Since(start).Round(time.Second))
	return nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
