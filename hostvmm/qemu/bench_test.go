package qemu

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/cocoon-containers/cocoon/hostvmm"
	"github.com/cocoon-containers/cocoon/hostvmm/vmtest"
	"github.com/cocoon-containers/cocoon/rootfs"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// BenchmarkBootToAgentReady measures, under TCG, the time from launching
// QEMU to the first answered Health.Version, alternating the variants in
// every iteration so that load from other processes hits them alike:
//
//	hello-raw       the hello init, QEMU started directly (reference)
//	hello-launcher  the hello init through this launcher
//	agent-launcher  the agent named by COCOON_BENCH_AGENT through this
//	                launcher; the hello image is then padded to the same
//	                initrd size, so hello-launcher is its reference
//
// Both images carry rootfs.DefaultModules. It reports the median seconds
// of each variant and the ratios launcher/raw and agent/hello;
// hack/bench/hostvmm.sh prints them.
func BenchmarkBootToAgentReady(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	helloDir, agentDir := filepath.Join(dir, "hello"), filepath.Join(dir, "agent")
	for _, d := range []string{helloDir, agentDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	init, err := vmtest.BuildHelloInit(ctx, helloDir)
	if err != nil {
		b.Fatal(err)
	}
	hello, err := vmtest.BuildImageWith(ctx, init, helloDir, rootfs.DefaultModules, "")
	if err != nil {
		b.Fatal(err)
	}
	var agent *vmtest.Image
	if bin := os.Getenv("COCOON_BENCH_AGENT"); bin != "" {
		if agent, err = vmtest.BuildImageWith(ctx, bin, agentDir, rootfs.DefaultModules, ""); err != nil {
			b.Fatal(err)
		}
		st, err := os.Stat(agent.Initrd)
		if err != nil {
			b.Fatal(err)
		}
		if err := vmtest.PadInitrd(hello.Initrd, st.Size()); err != nil {
			b.Fatal(err)
		}
	}
	l := &Launcher{Accel: "tcg"}
	cfg := func(img *vmtest.Image) hostvmm.Config {
		c := hostvmm.Config{ID: "bench", StateDir: filepath.Join(dir, "state"), Kernel: img.Kernel, Initrd: img.Initrd,
			Cmdline: "console=ttyS0 quiet panic=-1"}
		if err := hostvmm.Validate(&c, hostvmm.Requirements{Kernel: true}); err != nil {
			b.Fatal(err)
		}
		return c
	}
	raw := func() time.Duration {
		c := cfg(hello)
		args, err := l.Args(&c)
		if err != nil {
			b.Fatal(err)
		}
		if err := os.MkdirAll(c.StateDir, 0o700); err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(c.StateDir)
		start := time.Now()
		cmd := exec.Command("qemu-system-x86_64", args...)
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		defer cmd.Wait()
		defer cmd.Process.Kill()
		var conn net.Conn
		for conn == nil {
			if conn, err = net.Dial("unix", filepath.Join(c.StateDir, "agent.sock")); err != nil {
				time.Sleep(5 * time.Millisecond)
			}
		}
		version(b, conn)
		return time.Since(start)
	}
	launch := func(img *vmtest.Image) (time.Duration, error) {
		start := time.Now()
		sb, err := l.Start(ctx, cfg(img))
		if err != nil {
			return 0, err
		}
		defer sb.Cleanup()
		dctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		conn, err := sb.DialAgent(dctx)
		if err != nil {
			return 0, err
		}
		c := ttrpc.NewClient(conn)
		defer c.Close()
		if _, err := agentpb.NewHealthClient(c).Version(dctx, &agentpb.CheckRequest{}); err != nil {
			console, _ := os.ReadFile(sb.ConsoleLog())
			if len(console) > 1500 {
				console = console[len(console)-1500:]
			}
			return 0, fmt.Errorf("%w; console tail:\n%s", err, console)
		}
		return time.Since(start), nil
	}
	var tRaw, tHello, tAgent []time.Duration
	var agentErr error
	for i := 0; i < b.N; i++ {
		tRaw = append(tRaw, raw())
		d, err := launch(hello)
		if err != nil {
			b.Fatal(err)
		}
		tHello = append(tHello, d)
		if agent != nil && agentErr == nil {
			d, agentErr = launch(agent)
			tAgent = append(tAgent, d)
		}
	}
	b.ReportMetric(median(tRaw), "hello-raw-s")
	b.ReportMetric(median(tHello), "hello-launcher-s")
	b.ReportMetric(median(tHello)/median(tRaw), "launcher/raw")
	if agentErr != nil {
		b.Logf("the agent did not become ready: %v", agentErr)
	} else if agent != nil {
		b.ReportMetric(median(tAgent), "agent-launcher-s")
		b.ReportMetric(median(tAgent)/median(tHello), "agent/hello")
	}
}

func median(d []time.Duration) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2].Seconds()
	}
	return (s[n/2-1] + s[n/2]).Seconds() / 2
}

func version(b *testing.B, conn net.Conn) {
	c := ttrpc.NewClient(conn)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := agentpb.NewHealthClient(c).Version(ctx, &agentpb.CheckRequest{}); err != nil {
		b.Fatal(err)
	}
}
