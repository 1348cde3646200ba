package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-containers/cocoon/agent/agenttest"
	"github.com/cocoon-containers/cocoon/agent/container"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// benchBundle writes a busybox bundle whose config.json is the same spec the
// agent receives, for runc.
func benchBundle(b *testing.B) (dir string, spec *agentpb.Spec) {
	b.Helper()
	agenttest.RequireRoot(b)
	if _, err := exec.LookPath("runc"); err != nil {
		b.Fatalf("runc (Debian package runc) is needed as the reference: %v", err)
	}
	dir = b.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	if err := agenttest.MakeBusyboxRootfs(rootfs); err != nil {
		b.Fatal(err)
	}
	spec = agenttest.Spec(rootfs, "/bin/true")
	s, err := container.SpecFromProto(spec)
	if err != nil {
		b.Fatal(err)
	}
	data, err := json.Marshal(s)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644); err != nil {
		b.Fatal(err)
	}
	return dir, spec
}

// reportLatency reports the median and 95th percentile of samples.
func reportLatency(b *testing.B, samples []time.Duration) {
	if len(samples) == 0 {
		return
	}
	slices.Sort(samples)
	p := func(q float64) float64 {
		i := int(q*float64(len(samples)-1) + 0.5)
		return float64(samples[i].Microseconds()) / 1000
	}
	b.ReportMetric(p(0.50), "p50-ms")
	b.ReportMetric(p(0.95), "p95-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkTrue measures create+start+wait+delete of /bin/true through the
// agent's ttrpc API and with `runc run` on the same bundle.
func BenchmarkTrue(b *testing.B) {
	dir, spec := benchBundle(b)
	b.Run("agent", func(b *testing.B) {
		a := startAgent(b)
		c := agentpb.NewAgentServiceClient(a.dial(b))
		ctx := context.Background()
		if _, err := c.CreateSandbox(ctx, &agentpb.CreateSandboxRequest{SandboxId: "bench"}); err != nil {
			b.Fatal(err)
		}
		samples := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			id := "bench" + strconv.Itoa(i)
			start := time.Now()
			if _, err := c.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: id, OCI: spec}); err != nil {
				b.Fatal(err)
			}
			if _, err := c.StartContainer(ctx, &agentpb.StartContainerRequest{ContainerId: id}); err != nil {
				b.Fatal(err)
			}
			w, err := c.WaitProcess(ctx, &agentpb.WaitProcessRequest{ContainerId: id})
			if err != nil || w.Status != 0 {
				b.Fatalf("wait: %v, status %v", err, w)
			}
			if _, err := c.RemoveContainer(ctx, &agentpb.RemoveContainerRequest{ContainerId: id}); err != nil {
				b.Fatal(err)
			}
			samples = append(samples, time.Since(start))
		}
		b.StopTimer()
		reportLatency(b, samples)
		a.stop(b)
	})
	b.Run("runc", func(b *testing.B) {
		root := b.TempDir()
		// runc reads cgroupsPath from config.json: give it its own parent.
		cfgPath := filepath.Join(dir, "config.json")
		samples := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			id := "runc" + strconv.Itoa(i)
			if err := setCgroupsPath(cfgPath, "/cocoon-bench-runc/"+id); err != nil {
				b.Fatal(err)
			}
			cmd := exec.Command("runc", "--root", root, "run", "--bundle", dir, id)
			start := time.Now()
			out, err := cmd.CombinedOutput()
			if err != nil {
				b.Fatalf("runc run: %v\n%s", err, out)
			}
			samples = append(samples, time.Since(start))
		}
		b.StopTimer()
		reportLatency(b, samples)
		for _, d := range cgroupDirs("/cocoon-bench-runc") {
			os.Remove(d)
		}
	})
}

func setCgroupsPath(cfgPath, cg string) error {
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		return err
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return err
	}
	linux, _ := m["linux"].(map[string]any)
	if linux == nil {
		linux = map[string]any{}
		m["linux"] = linux
	}
	linux["cgroupsPath"] = cg
	out, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return os.WriteFile(cfgPath, out, 0o644)
}

// BenchmarkAgentRSS reports the agent's resident memory when idle and after
// 100 containers ran and were removed.
func BenchmarkAgentRSS(b *testing.B) {
	_, spec := benchBundle(b)
	for i := 0; i < b.N; i++ {
		a := startAgent(b)
		c := agentpb.NewAgentServiceClient(a.dial(b))
		ctx := context.Background()
		if _, err := c.CreateSandbox(ctx, &agentpb.CreateSandboxRequest{SandboxId: "rss"}); err != nil {
			b.Fatal(err)
		}
		idle := rssKiB(b, a.cmd.Process.Pid)
		for j := 0; j < 100; j++ {
			id := fmt.Sprintf("rss%d", j)
			if _, err := c.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: id, OCI: spec}); err != nil {
				b.Fatal(err)
			}
			if _, err := c.StartContainer(ctx, &agentpb.StartContainerRequest{ContainerId: id}); err != nil {
				b.Fatal(err)
			}
			if _, err := c.WaitProcess(ctx, &agentpb.WaitProcessRequest{ContainerId: id}); err != nil {
				b.Fatal(err)
			}
			if _, err := c.RemoveContainer(ctx, &agentpb.RemoveContainerRequest{ContainerId: id}); err != nil {
				b.Fatal(err)
			}
		}
		after := rssKiB(b, a.cmd.Process.Pid)
		a.stop(b)
		b.ReportMetric(float64(idle)/1024, "idle-rss-MiB")
		b.ReportMetric(float64(after)/1024, "rss-after-100-MiB")
		b.ReportMetric(0, "ns/op")
	}
}

func rssKiB(b *testing.B, pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			n, err := strconv.Atoi(f[0])
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
