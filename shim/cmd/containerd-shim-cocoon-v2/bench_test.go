package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/cocoon-containers/cocoon/hostvmm"
	"github.com/cocoon-containers/cocoon/hostvmm/qemu"
	"github.com/cocoon-containers/cocoon/hostvmm/vmtest"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/shim/shimtest"
)

func median(d []time.Duration) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2].Seconds()
}

// BenchmarkCtrRun measures `ctr run --rm` of busybox `true`, the variants
// alternating in every round so that load hits them alike:
//
//	runc      io.containerd.runc.v2 (Debian's runc), the reference
//	process   our runtime with the process launcher (goal: <= 1.5x runc)
//	qemu      our runtime booting a QEMU TCG guest per container
//	bare      the QEMU launcher booting the same image to an answered
//	          Health, without containerd or the shim (goal: qemu <= 1.3x)
//
// hack/bench/shim.sh prints the medians and ratios.
func BenchmarkCtrRun(b *testing.B) {
	if cd == nil {
		b.Skip("needs root (the containerd harness did not start)")
	}
	ctx := context.Background()
	dir := b.TempDir()
	img, err := vmtest.AgentImage(ctx, dir)
	if err != nil {
		b.Fatal(err)
	}
	qemuCfg := filepath.Join(dir, "qemu.toml")
	body := fmt.Sprintf("[sandbox]\nlauncher = \"qemu\"\nkernel = %q\ninitrd = %q\nshared_fs = \"9p\"\nmemory_mib = 512\nkernel_params = \"console=ttyS0 quiet panic=-1\"\nstate_dir = %q\n",
		img.Kernel, img.Initrd, filepath.Join(dir, "sandboxes"))
	if err := os.WriteFile(qemuCfg, []byte(body), 0o600); err != nil {
		b.Fatal(err)
	}
	run := func(i int, args ...string) time.Duration {
		start := time.Now()
		full := append([]string{"run", "--rm"}, args...)
		full = append(full, shimtest.BusyboxImageName, fmt.Sprintf("bench-%d", i), "true")
		if _, _, err := cd.Ctr(ctx, full...); err != nil {
			b.Fatalf("%v\n%s", err, cd.LogTail())
		}
		return time.Since(start)
	}
	bare := func(i int) time.Duration {
		start := time.Now()
		l := &qemu.Launcher{QuitTimeout: time.Minute}
		sb, err := l.Start(ctx, hostvmm.Config{ID: fmt.Sprintf("bare-%d", i), StateDir: filepath.Join(dir, fmt.Sprintf("bare-%d", i)),
			Kernel: img.Kernel, Initrd: img.Initrd, Cmdline: "console=ttyS0 quiet panic=-1", MemoryMiB: 512})
		if err != nil {
			b.Fatal(err)
		}
		defer sb.Cleanup()
		conn, err := sb.DialAgent(ctx)
		if err != nil {
			b.Fatal(err)
		}
		c := ttrpc.NewClient(conn)
		defer c.Close()
		if _, err := agentpb.NewHealthClient(c).Check(ctx, &agentpb.CheckRequest{}); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	var runc, process, vm, boot []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		runc = append(runc, run(4*i, "--runtime", "io.containerd.runc.v2"))
		process = append(process, run(4*i+1, "--runtime", runtimeName, "--runtime-config-path", configPath))
		vm = append(vm, run(4*i+2, "--runtime", runtimeName, "--runtime-config-path", qemuCfg))
		boot = append(boot, bare(i))
	}
	b.StopTimer()
	b.ReportMetric(median(runc), "runc-s")
	b.ReportMetric(median(process), "process-s")
	b.ReportMetric(median(vm), "qemu-s")
	b.ReportMetric(median(boot), "bare-boot-s")
	b.ReportMetric(median(process)/median(runc), "process/runc")
	b.ReportMetric(median(vm)/median(boot), "qemu/bare")
	b.ReportMetric(0, "ns/op")
}
