package config

import (
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestSplitCmdline(t *testing.T) {
	tests := []struct {
		in   string
		want []Param
	}{
		{"", nil},
		{"quiet", []Param{{Key: "quiet"}}},
		{"a=1  b=\"x y\"\tc", []Param{{Key: "a", Value: "1", HasValue: true}, {Key: "b", Value: "x y", HasValue: true}, {Key: "c"}}},
		{"a=1 -- b=2", []Param{{Key: "a", Value: "1", HasValue: true}}},
		{"a= b=\n", []Param{{Key: "a", HasValue: true}, {Key: "b", HasValue: true}}},
	}
	for _, tt := range tests {
		got, err := SplitCmdline(tt.in)
		if err != nil {
			t.Fatalf("SplitCmdline(%q): %v", tt.in, err)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("SplitCmdline(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
	if _, err := SplitCmdline(`a="open`); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("unterminated quote: got %v, want invalid argument", err)
	}
}

func TestParse(t *testing.T) {
	hostData := strings.Repeat("ab", 32)
	meas := strings.Repeat("cd", 48)
	env := func(m map[string]string) func(string) string {
		return func(k string) string { return m[k] }
	}
	tests := []struct {
		name string
		src  Sources
		want Config
	}{
		{
			name: "defaults",
			want: Default(),
		},
		{
			name: "kata keys",
			src:  Sources{Cmdline: "console=ttyS0 agent.server_addr=vsock://-1:2048 agent.log=debug agent.debug_console agent.trace=true"},
			want: withDefaults(Config{ServerAddr: "vsock://-1:2048", LogLevel: slog.LevelDebug, DebugConsole: true, Attestation: "none"}),
		},
		{
			name: "cocoon keys win over agent keys",
			src:  Sources{Cmdline: "cocoon.server_addr=unix:///run/a.sock agent.server_addr=vsock://-1:2048 cocoon.attestation=simulated cocoon.sim_host_data=" + hostData + " cocoon.sim_measurement=" + meas + " cocoon.kbs_url=http://127.0.0.1:8080"},
			want: withDefaults(Config{ServerAddr: "unix:///run/a.sock", LogLevel: slog.LevelInfo, Attestation: "simulated",
				SimHostData: mustHex(hostData), SimMeasurement: mustHex(meas), KBSURL: "http://127.0.0.1:8080"}),
		},
		{
			name: "file then cmdline then env",
			src: Sources{
				File:    []byte("server_addr = \"unix:///file.sock\"\nlog_level = \"warn\"\nattestation = \"snp\"\ndebug_console = true\nrun_dir = \"/tmp/run\"\ncgroup_parent = \"/test\"\n"),
				Cmdline: "cocoon.server_addr=unix:///cmdline.sock",
				Getenv:  env(map[string]string{"KATA_AGENT_SERVER_ADDR": "unix:///kata.sock", "COCOON_AGENT_SERVER_ADDR": "unix:///cocoon.sock"}),
			},
			want: Config{ServerAddr: "unix:///cocoon.sock", LogLevel: slog.LevelWarn, Attestation: "snp", DebugConsole: true, RunDir: "/tmp/run", CgroupParent: "/test",
				DefaultPolicy: DefaultPolicyFile},
		},
		{
			name: "env overrides every key",
			src: Sources{
				File:    []byte("attestation = \"snp\"\ndefault_policy = \"/etc/file.rego\"\n"),
				Cmdline: "cocoon.kbs_url=http://10.0.0.1:8080 cocoon.log=warn",
				Getenv: env(map[string]string{"COCOON_ATTESTATION": "simulated", "COCOON_SIM_HOST_DATA": hostData,
					"COCOON_SIM_MEASUREMENT": meas, "COCOON_KBS_URL": "http://127.0.0.1:8080", "COCOON_LOG": "debug",
					"COCOON_DEFAULT_POLICY": "/run/env.rego", "COCOON_RUN_DIR": "/run/x", "COCOON_CGROUP_PARENT": "/y"}),
			},
			want: Config{ServerAddr: Default().ServerAddr, LogLevel: slog.LevelDebug, Attestation: "simulated",
				SimHostData: mustHex(hostData), SimMeasurement: mustHex(meas), KBSURL: "http://127.0.0.1:8080",
				RunDir: "/run/x", CgroupParent: "/y", DefaultPolicy: "/run/env.rego"},
		},
		{
			name: "kata env alone",
			src:  Sources{Getenv: env(map[string]string{"KATA_AGENT_SERVER_ADDR": "unix:///kata.sock"})},
			want: withDefaults(Config{ServerAddr: "unix:///kata.sock", LogLevel: slog.LevelInfo, Attestation: "none"}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.src)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct {
		name string
		src  Sources
	}{
		{"bad address", Sources{Cmdline: "agent.server_addr=tcp://1.2.3.4:1"}},
		{"bad level", Sources{Cmdline: "agent.log=loud"}},
		{"bad attestation", Sources{Cmdline: "cocoon.attestation=tdx"}},
		{"short host data", Sources{Cmdline: "cocoon.sim_host_data=abcd"}},
		{"non-hex measurement", Sources{Cmdline: "cocoon.sim_measurement=" + strings.Repeat("zz", 48)}},
		{"kbs scheme", Sources{Cmdline: "cocoon.kbs_url=file:///etc/passwd"}},
		{"unknown file key", Sources{File: []byte("surprise = 1\n")}},
		{"bad toml", Sources{File: []byte("server_addr = \n")}},
		{"relative run dir", Sources{File: []byte("run_dir = \"run\"\n")}},
		{"root cgroup parent", Sources{Cmdline: "cocoon.cgroup_parent=/"}},
		{"unclean cgroup parent", Sources{Cmdline: "cocoon.cgroup_parent=/a/../.."}},
		{"bad env address", Sources{Getenv: func(string) string { return "nowhere" }}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.src)
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("got %v, want an invalid-argument error", err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "agent.toml")
	cmdline := filepath.Join(dir, "cmdline")
	if err := os.WriteFile(cmdline, []byte("agent.log=error\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("COCOON_AGENT_SERVER_ADDR", "")
	t.Setenv("KATA_AGENT_SERVER_ADDR", "")
	got, err := Load(file, cmdline)
	if err != nil {
		t.Fatalf("Load without a file: %v", err)
	}
	if got.LogLevel != slog.LevelError {
		t.Errorf("log level: got %v, want %v", got.LogLevel, slog.LevelError)
	}
	if err := os.WriteFile(file, make([]byte, maxFileBytes+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(file, cmdline); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("oversized file: got %v, want invalid argument", err)
	}
}

func withDefaults(c Config) Config {
	d := Default()
	c.RunDir, c.CgroupParent, c.DefaultPolicy = d.RunDir, d.CgroupParent, d.DefaultPolicy
	return c
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func TestRootfsVerity(t *testing.T) {
	root := strings.Repeat("ab", 32)
	cfg, err := Parse(Sources{Cmdline: "cocoon.rootfs_verity=" + root + " cocoon.rootfs_verity_salt=0011 cocoon.rootfs_verity_blocks=42 cocoon.rootfs_fstype=ext4"})
	if err != nil {
		t.Fatal(err)
	}
	want := &VerityRootfs{RootHash: mustHex(root), Salt: []byte{0, 0x11}, Blocks: 42, FSType: "ext4"}
	if !reflect.DeepEqual(cfg.RootfsVerity, want) {
		t.Errorf("got %+v, want %+v", cfg.RootfsVerity, want)
	}
	// Only the measured command line sets it, not the environment.
	cfg, err = Parse(Sources{Getenv: func(k string) string {
		if k == "COCOON_ROOTFS_VERITY" {
			return root
		}
		return ""
	}})
	if err != nil || cfg.RootfsVerity != nil {
		t.Errorf("environment set the verity rootfs: %+v, %v", cfg.RootfsVerity, err)
	}
	for _, bad := range []string{
		"cocoon.rootfs_verity=" + root,
		"cocoon.rootfs_verity_blocks=42",
		"cocoon.rootfs_verity=abcd cocoon.rootfs_verity_blocks=1",
		"cocoon.rootfs_verity=" + root + " cocoon.rootfs_verity_blocks=0",
		"cocoon.rootfs_verity=" + root + " cocoon.rootfs_verity_blocks=1 cocoon.rootfs_fstype=vfat",
	} {
		if _, err := Parse(Sources{Cmdline: bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestImageKeys(t *testing.T) {
	cfg, err := Parse(Sources{
		File:    []byte("image_registry_auth = \"/etc/cocoon/auth.json\"\n"),
		Cmdline: "cocoon.image_policy=kbs:///default/security-policy/test cocoon.image_insecure_registries=10.0.2.100:5000,registry.local",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ImagePolicy != "kbs:///default/security-policy/test" || cfg.ImageRegistryAuth != "/etc/cocoon/auth.json" ||
		!reflect.DeepEqual(cfg.ImageInsecureRegistries, []string{"10.0.2.100:5000", "registry.local"}) {
		t.Fatalf("parsed %q %q %q", cfg.ImagePolicy, cfg.ImageRegistryAuth, cfg.ImageInsecureRegistries)
	}
	for _, bad := range []string{
		"cocoon.image_policy=kbs:///default/../x",
		"cocoon.image_policy=kbs:///two/parts",
		"cocoon.image_policy=relative/policy.json",
		"cocoon.image_policy=https://example.invalid/policy.json",
		"cocoon.image_registry_auth=/etc/../etc/auth.json",
		"cocoon.image_insecure_registries=a,,b",
		"cocoon.image_insecure_registries=host/path",
	} {
		if _, err := Parse(Sources{Cmdline: bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestEndpointAddr(t *testing.T) {
	for v, ok := range map[string]bool{"off": true, "127.0.0.1:9006": true, "[::1]:8006": true, "0.0.0.0:8006": false, "10.0.2.15:8006": false, "8006": false} {
		cfg, err := Parse(Sources{Cmdline: "cocoon.endpoint_addr=" + v})
		if ok && (err != nil || cfg.EndpointAddr != v) {
			t.Errorf("%q: %v, %q", v, err, cfg.EndpointAddr)
		}
		if !ok && err == nil {
			t.Errorf("%q accepted", v)
		}
	}
}

func TestImageRegistryAddrs(t *testing.T) {
	cfg, err := Parse(Sources{Cmdline: "cocoon.image_registry_addrs=127.0.0.1:5000=10.0.2.100:5000,registry.example:443=10.0.2.101:443"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"127.0.0.1:5000": "10.0.2.100:5000", "registry.example:443": "10.0.2.101:443"}
	if !reflect.DeepEqual(cfg.ImageRegistryAddrs, want) {
		t.Fatalf("got %v", cfg.ImageRegistryAddrs)
	}
	for _, bad := range []string{"127.0.0.1:5000", "127.0.0.1:5000=registry:5000", "noport=10.0.2.100:5000", "a:1=10.0.2.100:0", "a:1=10.0.2.100:1,,"} {
		if _, err := Parse(Sources{Cmdline: "cocoon.image_registry_addrs=" + bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
