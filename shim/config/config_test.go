package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		check   func(t *testing.T, c Config)
		wantErr bool
	}{
		{
			name: "design example",
			in: `
[sandbox]
launcher = "qemu"
kernel = "/usr/share/cocoon/vmlinuz"
initrd = "/usr/share/cocoon/cocoon-initrd.img"
vcpus = 2
memory_mib = 1024
confidential = "simulated"
agent = "/usr/libexec/cocoon/cocoon-agent"
agent_dial_timeout = "60s"

[kbs]
url = "http://127.0.0.1:8080"
`,
			check: func(t *testing.T, c Config) {
				s := c.Sandbox
				if got, want := s.VCPUs, 2; got != want {
					t.Errorf("vcpus: got %d, want %d", got, want)
				}
				if got, want := s.MemoryMiB, 1024; got != want {
					t.Errorf("memory: got %d, want %d", got, want)
				}
				if got, want := s.AgentDialTimeout.Duration, 60*time.Second; got != want {
					t.Errorf("dial timeout: got %s, want %s", got, want)
				}
				if got, want := s.SharedFS, SharedFSNone; got != want {
					t.Errorf("shared fs of a confidential sandbox: got %q, want %q", got, want)
				}
				if got, want := c.KBS.URL, "http://127.0.0.1:8080"; got != want {
					t.Errorf("kbs url: got %q, want %q", got, want)
				}
			},
		},
		{
			name: "defaults",
			in:   "",
			check: func(t *testing.T, c Config) {
				if got, want := c.Sandbox.Launcher, LauncherQEMU; got != want {
					t.Errorf("launcher: got %q, want %q", got, want)
				}
				if got, want := c.Sandbox.SharedFS, SharedFS9P; got != want {
					t.Errorf("shared fs: got %q, want %q", got, want)
				}
				if got, want := c.Sandbox.AgentDialTimeout.Duration, 30*time.Second; got != want {
					t.Errorf("dial timeout: got %s, want %s", got, want)
				}
			},
		},
		{
			name: "process launcher uses host paths",
			in:   "[sandbox]\nlauncher = \"process\"\n",
			check: func(t *testing.T, c Config) {
				if got, want := c.Sandbox.SharedFS, SharedFSNone; got != want {
					t.Errorf("shared fs: got %q, want %q", got, want)
				}
			},
		},
		{
			name: "snp waits longer",
			in:   "[sandbox]\nlauncher = \"clh\"\nconfidential = \"snp\"\n",
			check: func(t *testing.T, c Config) {
				if got, want := c.Sandbox.AgentDialTimeout.Duration, 90*time.Second; got != want {
					t.Errorf("dial timeout: got %s, want %s", got, want)
				}
			},
		},
		{
			name: "image pull in the guest",
			in:   "[sandbox]\nconfidential = \"simulated\"\nimage_pull = \"guest\"\n",
			check: func(t *testing.T, c Config) {
				if got, want := c.Sandbox.ImagePull, ImagePullGuest; got != want {
					t.Errorf("image pull: got %q, want %q", got, want)
				}
			},
		},
		{
			name: "image pull defaults to the host",
			in:   "[sandbox]\n",
			check: func(t *testing.T, c Config) {
				if got, want := c.Sandbox.ImagePull, ImagePullHost; got != want {
					t.Errorf("image pull: got %q, want %q", got, want)
				}
			},
		},
		{name: "bad image pull", in: "[sandbox]\nimage_pull = \"registry\"\n", wantErr: true},
		{name: "unknown key", in: "[sandbox]\nlauncer = \"qemu\"\n", wantErr: true},
		{name: "unknown launcher", in: "[sandbox]\nlauncher = \"firecracker\"\n", wantErr: true},
		{name: "bad confidential", in: "[sandbox]\nconfidential = \"tdx\"\n", wantErr: true},
		{name: "zero vcpus", in: "[sandbox]\nvcpus = 0\n", wantErr: true},
		{name: "tiny memory", in: "[sandbox]\nmemory_mib = 8\n", wantErr: true},
		{name: "relative kernel", in: "[sandbox]\nkernel = \"vmlinuz\"\n", wantErr: true},
		{name: "unclean agent path", in: "[sandbox]\nagent = \"/usr/../tmp/agent\"\n", wantErr: true},
		{name: "bad duration", in: "[sandbox]\nagent_dial_timeout = \"soon\"\n", wantErr: true},
		{name: "snp in a process", in: "[sandbox]\nlauncher = \"process\"\nconfidential = \"snp\"\n", wantErr: true},
		{name: "confidential shared dir", in: "[sandbox]\nconfidential = \"simulated\"\nshared_fs = \"9p\"\n", wantErr: true},
		{name: "bad log level", in: "log_level = \"chatty\"\n", wantErr: true},
		{name: "not toml", in: "[sandbox\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.in))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got config %+v, want an error", c)
				}
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Errorf("got error %v, want an invalid-argument error", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			tt.check(t, c)
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	if err := os.WriteFile(good, []byte("[sandbox]\nlauncher = \"process\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.toml")
	if err := os.WriteFile(big, make([]byte, maxFileSize+10), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(good)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if got, want := c.Sandbox.Launcher, LauncherProcess; got != want {
		t.Errorf("launcher: got %q, want %q", got, want)
	}
	if _, err := Load(filepath.Join(dir, "missing.toml")); err == nil {
		t.Error("load of a missing explicit path: got no error, want one")
	}
	if _, err := Load(big); err == nil {
		t.Error("load of an oversized file: got no error, want one")
	}
	if got, want := Resolve(""), DefaultPath; got != want {
		t.Errorf("resolve empty: got %q, want %q", got, want)
	}
	if got, want := Resolve(good), good; got != want {
		t.Errorf("resolve: got %q, want %q", got, want)
	}
}

// TestDeployedConfiguration: the configuration the installer puts on
// nodes is one the shim accepts.
func TestDeployedConfiguration(t *testing.T) {
	b, err := os.ReadFile("../../deploy/configuration.toml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(b)
	if err != nil {
		t.Fatalf("deploy/configuration.toml: %v", err)
	}
	if c.Sandbox.Confidential == ConfidentialNone {
		t.Error("the deployed configuration runs pods that are not confidential")
	}
}
