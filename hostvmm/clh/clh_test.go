package clh

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"

	"github.com/cocoon-containers/cocoon/hostvmm"
	"github.com/cocoon-containers/cocoon/hostvmm/vmtest"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

var update = flag.Bool("update", false, "rewrite the golden request files in testdata")

func TestMain(m *testing.M) {
	if os.Getenv("COCOON_FAKE_VMM") == "1" {
		os.Exit(fakeMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "hc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

type env struct {
	boot, state, share, record string
	cfg                        hostvmm.Config
}

// setup makes boot files, a state dir path and a share, and points the
// fake at a fresh record file.
func setup(t *testing.T, mode, features string) *env {
	t.Helper()
	root := shortTempDir(t)
	e := &env{boot: filepath.Join(root, "boot"), state: filepath.Join(root, "state"),
		share: filepath.Join(root, "share"), record: filepath.Join(root, "record.jsonl")}
	for _, d := range []string{e.boot, e.share} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"vmlinuz", "initrd", "rootfs.img", "guest.igvm"} {
		if err := os.WriteFile(filepath.Join(e.boot, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e.cfg = hostvmm.Config{ID: "clh1", StateDir: e.state,
		Kernel: filepath.Join(e.boot, "vmlinuz"), Initrd: filepath.Join(e.boot, "initrd"),
		Cmdline: "console=ttyS0 quiet", VCPUs: 2, MemoryMiB: 256}
	t.Setenv("COCOON_FAKE_VMM", "1")
	t.Setenv("COCOON_FAKE_MODE", mode)
	t.Setenv("COCOON_FAKE_FEATURES", features)
	t.Setenv("COCOON_FAKE_RECORD", e.record)
	return e
}

func launcher() *Launcher {
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return &Launcher{Binary: exe, Virtiofsd: exe, StartTimeout: 30 * time.Second, ShutdownTimeout: 30 * time.Second}
}

// checkGolden compares the recorded requests, with the temporary paths
// replaced, against testdata/<name>.json.
func checkGolden(t *testing.T, e *env, name string) {
	t.Helper()
	raw, err := os.ReadFile(e.record)
	if err != nil {
		t.Fatal(err)
	}
	var reqs []any
	for _, line := range bytes.Split(bytes.TrimSpace(raw), []byte("\n")) {
		var v any
		if err := json.Unmarshal(line, &v); err != nil {
			t.Fatalf("record line %q: %v", line, err)
		}
		reqs = append(reqs, v)
	}
	got, err := json.MarshalIndent(reqs, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = bytes.ReplaceAll(got, []byte(e.state), []byte("$STATE"))
	got = bytes.ReplaceAll(got, []byte(e.boot), []byte("$BOOT"))
	got = bytes.ReplaceAll(got, []byte(e.share), []byte("$SHARE"))
	got = append(got, '\n')
	golden := filepath.Join("testdata", name+".json")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to record)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("requests differ from %s:\ngot:\n%s\nwant:\n%s", golden, got, want)
	}
}

// processesMentioning lists the live processes whose command line
// contains s.
func processesMentioning(s string) []string {
	var pids []string
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil {
			continue
		}
		st, _ := os.ReadFile(filepath.Join(d, "stat"))
		if bytes.Contains(b, []byte(s)) && !bytes.Contains(st, []byte(") Z ")) {
			pids = append(pids, filepath.Base(d))
		}
	}
	return pids
}

func health(t *testing.T, sb hostvmm.Sandbox) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := sb.DialAgent(ctx)
	if err != nil {
		t.Fatalf("dial agent: %v", err)
	}
	c := ttrpc.NewClient(conn)
	defer c.Close()
	v, err := agentpb.NewHealthClient(c).Version(ctx, &agentpb.CheckRequest{})
	if err != nil {
		t.Fatalf("Health.Version: %v", err)
	}
	return v.AgentVersion
}

func assertClean(t *testing.T, e *env) {
	t.Helper()
	if _, err := os.Stat(e.state); !errors.Is(err, os.ErrNotExist) {
		entries, _ := os.ReadDir(e.state)
		t.Errorf("state dir after cleanup: %v (entries %v), want it removed", err, entries)
	}
}

func TestLaunch(t *testing.T) {
	tests := []struct {
		name       string
		features   string
		mode       string
		cfg        func(e *env)
		stop       func(t *testing.T, sb hostvmm.Sandbox)
		wantReason string
	}{
		{
			name: "plain", features: "kvm", mode: "ok",
			cfg: func(e *env) {
				e.cfg.Image = filepath.Join(e.boot, "rootfs.img")
				e.cfg.VerityCmdline = "root=/dev/vda"
				e.cfg.Disks = []hostvmm.Disk{{Path: filepath.Join(e.boot, "initrd")}}
				e.cfg.SharedDirs = []hostvmm.SharedDir{{Tag: "shared", HostPath: e.share, ReadOnly: true}}
			},
			stop: func(t *testing.T, sb hostvmm.Sandbox) {
				for i := 0; i < 2; i++ {
					if err := sb.Stop(context.Background()); err != nil {
						t.Fatalf("stop #%d: %v", i+1, err)
					}
				}
			},
			wantReason: "shutdown (host request)",
		},
		{
			name: "simulated", features: "kvm,igvm", mode: "ok",
			cfg: func(e *env) {
				e.cfg.Confidential = hostvmm.ConfidentialSimulated
				e.cfg.HostData = [32]byte{0xaa, 0xbb}
				e.cfg.SimMeasurement = [48]byte{0x01, 0x02}
			},
			stop: func(t *testing.T, sb hostvmm.Sandbox) {
				if err := sb.Stop(context.Background()); err != nil {
					t.Fatal(err)
				}
			},
			wantReason: "shutdown (host request)",
		},
		{
			name: "snp", features: "kvm,sev_snp,igvm", mode: "ok",
			cfg: func(e *env) {
				e.cfg.Confidential = hostvmm.ConfidentialSNP
				e.cfg.IGVM = filepath.Join(e.boot, "guest.igvm")
				e.cfg.HostData = [32]byte{0x01, 0x23, 0x45}
			},
			stop: func(t *testing.T, sb hostvmm.Sandbox) {
				if err := sb.Stop(context.Background()); err != nil {
					t.Fatal(err)
				}
			},
			wantReason: "shutdown (host request)",
		},
		{
			name: "vmm ignores shutdown", features: "kvm", mode: "ignore-shutdown",
			stop: func(t *testing.T, sb hostvmm.Sandbox) {
				sb.(*sandbox).shutdownTimeout = 200 * time.Millisecond
				if err := sb.Stop(context.Background()); err != nil {
					t.Fatal(err)
				}
			},
			wantReason: "killed by signal 9",
		},
		{
			name: "kill -9", features: "kvm", mode: "ok",
			stop: func(t *testing.T, sb hostvmm.Sandbox) {
				if err := sb.(*sandbox).proc.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			},
			wantReason: "killed by signal 9",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := setup(t, tt.mode, tt.features)
			if tt.cfg != nil {
				tt.cfg(e)
			}
			sb, err := launcher().Start(context.Background(), e.cfg)
			if err != nil {
				t.Fatalf("start: %v", err)
			}
			t.Cleanup(func() { sb.Cleanup() })
			if got, want := sb.AgentAddr(), "hvsock://"+filepath.Join(e.state, "vsock.sock")+":1024"; got != want {
				t.Errorf("agent addr = %q, want %q", got, want)
			}
			if got, want := health(t, sb), "fake-clh-guest"; got != want {
				t.Errorf("agent version = %q, want %q", got, want)
			}
			tt.stop(t, sb)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			ex, err := sb.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if ex.Reason != tt.wantReason {
				t.Errorf("exit = %q, want %q", ex.Reason, tt.wantReason)
			}
			if _, err := sb.DialAgent(ctx); !errors.Is(err, errdefs.ErrUnavailable) {
				t.Errorf("dial after exit: %v, want unavailable", err)
			}
			if err := sb.Cleanup(); err != nil {
				t.Fatalf("cleanup: %v", err)
			}
			assertClean(t, e)
			if pids := processesMentioning(e.state); len(pids) > 0 {
				t.Errorf("processes still running after cleanup: %v", pids)
			}
			checkGolden(t, e, strings.ReplaceAll(tt.name, " ", "-"))
		})
	}
}

func TestLaunchFailures(t *testing.T) {
	tests := []struct {
		name     string
		features string
		mode     string
		cfg      func(e *env)
		want     []string
		class    error
	}{
		{name: "boot fails", features: "kvm", mode: "boot-500",
			want: []string{"vm.boot: http 500", "failed to boot"}, class: errdefs.ErrUnknown},
		{name: "vm not created", features: "kvm", mode: "create-ignored",
			want: []string{"vm.info: http 404"}, class: errdefs.ErrNotFound},
		{name: "vmm dies", features: "kvm", mode: "die-after-create",
			want: []string{"vm.info", "exited with code 3"}},
		{name: "snp without the feature", features: "kvm,igvm", mode: "ok",
			cfg: func(e *env) {
				e.cfg.Confidential = hostvmm.ConfidentialSNP
				e.cfg.IGVM = filepath.Join(e.boot, "guest.igvm")
			},
			want: []string{`lacks the "sev_snp" feature`}, class: errdefs.ErrFailedPrecondition},
		{name: "snp on an old binary", features: "", mode: "ok",
			cfg: func(e *env) {
				e.cfg.Confidential = hostvmm.ConfidentialSNP
				e.cfg.IGVM = filepath.Join(e.boot, "guest.igvm")
			},
			want: []string{`lacks the "sev_snp" feature`}, class: errdefs.ErrFailedPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := setup(t, tt.mode, tt.features)
			e.cfg.SharedDirs = []hostvmm.SharedDir{{Tag: "shared", HostPath: e.share}}
			if tt.cfg != nil {
				tt.cfg(e)
				e.cfg.SharedDirs = nil
			}
			sb, err := launcher().Start(context.Background(), e.cfg)
			if err == nil {
				sb.Cleanup()
				t.Fatal("start succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if tt.class != nil && !errors.Is(err, tt.class) {
				t.Errorf("error %v is not %v", err, tt.class)
			}
			assertClean(t, e)
			// Nothing the launcher started may survive.
			if pids := processesMentioning(e.state); len(pids) > 0 {
				t.Errorf("processes still running with the state dir in their arguments: %v", pids)
			}
			checkGolden(t, e, strings.ReplaceAll(tt.name, " ", "-"))
		})
	}
}

func TestStartRejects(t *testing.T) {
	e := setup(t, "ok", "kvm")
	tests := []struct {
		name string
		mod  func(c *hostvmm.Config)
		want error
	}{
		{"snp without igvm", func(c *hostvmm.Config) { c.Confidential = hostvmm.ConfidentialSNP }, errdefs.ErrInvalidArgument},
		{"shared dir in a confidential vm", func(c *hostvmm.Config) {
			c.Confidential = hostvmm.ConfidentialSimulated
			c.SharedDirs = []hostvmm.SharedDir{{Tag: "s", HostPath: e.share}}
		}, errdefs.ErrInvalidArgument},
		{"missing binary", nil, errdefs.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := e.cfg
			l := launcher()
			if tt.mod != nil {
				tt.mod(&cfg)
			} else {
				l.Binary = "/nonexistent/cloud-hypervisor"
			}
			sb, err := l.Start(context.Background(), cfg)
			if err == nil {
				sb.Cleanup()
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("start error = %v, want %v", err, tt.want)
			}
			assertClean(t, e)
		})
	}
}

// TestRealCloudHypervisor boots the hello image under cloud-hypervisor and
// reaches its Health service over hybrid vsock. It needs /dev/kvm and the
// cloud-hypervisor binary, which this CI machine lacks.
func TestRealCloudHypervisor(t *testing.T) {
	vmtest.RequireRoot(t)
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skip("needs /dev/kvm: cloud-hypervisor runs only on KVM or MSHV")
	}
	bin, err := exec.LookPath("cloud-hypervisor")
	if err != nil {
		t.Skip("needs the cloud-hypervisor binary on PATH")
	}
	dir := shortTempDir(t)
	img, err := vmtest.HelloImage(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := hostvmm.Config{ID: "real", StateDir: filepath.Join(dir, "state"), Kernel: img.Kernel, Initrd: img.Initrd,
		Cmdline: "console=ttyS0 panic=-1 hello.token=clh agent.server_addr=vsock://-1:1024"}
	sb, err := (&Launcher{Binary: bin}).Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	defer sb.Cleanup()
	if got, want := health(t, sb), "hello-clh"; got != want {
		t.Errorf("agent version = %q, want %q", got, want)
	}
	if err := sb.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}
