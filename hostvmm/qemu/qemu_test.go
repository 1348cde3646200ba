package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"

	"github.com/cocoon-containers/cocoon/hostvmm"
	"github.com/cocoon-containers/cocoon/hostvmm/vmtest"
	"github.com/cocoon-containers/cocoon/rootfs"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

var vmCount atomic.Int32

// shortTempDir is a temporary directory with a path short enough for unix
// sockets (t.TempDir embeds the test name).
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "hv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// bootFiles makes empty kernel and initrd files for argument tests.
func bootFiles(t *testing.T) (kernel, initrd string) {
	t.Helper()
	dir := t.TempDir()
	kernel, initrd = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd")
	for _, p := range []string{kernel, initrd} {
		if err := os.WriteFile(p, []byte(filepath.Base(p)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return kernel, initrd
}

// argValue returns the value following flag (the n-th occurrence).
func argValues(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

func TestArgs(t *testing.T) {
	kernel, initrd := bootFiles(t)
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal("busybox (Debian busybox-static) is needed for network relays")
	}
	share := t.TempDir()
	comma := filepath.Join(t.TempDir(), "a,b")
	if err := os.Mkdir(comma, 0o755); err != nil {
		t.Fatal(err)
	}
	hostData := [32]byte{1, 2, 3}
	base := func() hostvmm.Config {
		return hostvmm.Config{ID: "vm1", StateDir: "/run/cocoon/vm1", Kernel: kernel, Initrd: initrd, Cmdline: "console=ttyS0"}
	}
	tests := []struct {
		name     string
		launcher Launcher
		cfg      func() hostvmm.Config
		want     map[string][]string // flag -> values that must all be present
		appendIn []string            // substrings of -append
		appendNo []string            // substrings -append must not have
		err      error
	}{
		{
			name:     "microvm tcg",
			launcher: Launcher{Accel: "tcg"},
			cfg:      base,
			want: map[string][]string{
				"-machine": {"microvm,accel=tcg,acpi=on"},
				"-cpu":     {"max"},
				"-m":       {"512M"},
				"-smp":     {"1"},
				"-qmp":     {"unix:/run/cocoon/vm1/qmp.sock,server=on,wait=off"},
				"-chardev": {"socket,id=agent,path=/run/cocoon/vm1/agent.sock,server=on,wait=off", "file,id=console,path=/run/cocoon/vm1/console.log"},
				"-device":  {"virtio-serial-device", "virtserialport,chardev=agent,name=agent.channel.0"},
				"-global":  {"virtio-mmio.force-legacy=false"},
			},
			appendIn: []string{"console=ttyS0", "tsc_early_khz=", "agent.server_addr=serial://agent.channel.0"},
			appendNo: []string{"cocoon."},
		},
		{
			name:     "restricted network with forwards",
			launcher: Launcher{Accel: "tcg"},
			cfg: func() hostvmm.Config {
				c := base()
				c.Network = &hostvmm.Network{Forwards: []hostvmm.Forward{{GuestPort: 8080, HostAddr: "127.0.0.1:18080"}, {GuestPort: 5000, HostAddr: "127.0.0.1:5000"}}}
				return c
			},
			want: map[string][]string{
				"-netdev": {"user,id=net0,restrict=on,net=10.0.2.0/24,host=10.0.2.2,ipv6=off,guestfwd=tcp:10.0.2.100:8080-cmd:" + busybox + " nc 127.0.0.1 18080,guestfwd=tcp:10.0.2.100:5000-cmd:" + busybox + " nc 127.0.0.1 5000"},
				"-device": {"virtio-net-device,netdev=net0,mac=52:54:00:c0:c0:01"},
			},
		},
		{
			name:     "q35 kvm with disks and shares",
			launcher: Launcher{Accel: "kvm", Machine: MachineQ35},
			cfg: func() hostvmm.Config {
				c := base()
				c.VCPUs, c.MemoryMiB = 2, 1024
				c.Image, c.VerityCmdline = initrd, "dm-mod.create=x"
				c.Disks = []hostvmm.Disk{{Path: kernel}}
				c.SharedDirs = []hostvmm.SharedDir{{Tag: "sh0", HostPath: share}, {Tag: "sh1", HostPath: comma, ReadOnly: true}}
				return c
			},
			want: map[string][]string{
				"-machine": {"q35,accel=kvm"},
				"-cpu":     {"host"},
				"-m":       {"1024M"},
				"-smp":     {"2"},
				"-drive":   {"file=" + initrd + ",if=none,id=disk0,format=raw,cache=none,aio=threads,readonly=on", "file=" + kernel + ",if=none,id=disk1,format=raw,cache=none,aio=threads"},
				"-fsdev":   {"local,id=fs0,path=" + share + ",security_model=none", "local,id=fs1,path=" + strings.ReplaceAll(comma, ",", ",,") + ",security_model=none,readonly=on"},
				"-device":  {"virtio-serial-pci", "virtio-blk-pci,drive=disk0", "virtio-9p-pci,fsdev=fs1,mount_tag=sh1"},
			},
			appendIn: []string{"console=ttyS0 dm-mod.create=x"},
			appendNo: []string{"tsc_early_khz"},
		},
		{
			name:     "virtio-fs",
			launcher: Launcher{Accel: "tcg", SharedFS: "virtiofs"},
			cfg: func() hostvmm.Config {
				c := base()
				c.SharedDirs = []hostvmm.SharedDir{{Tag: "sh0", HostPath: share}}
				return c
			},
			want: map[string][]string{
				"-machine": {"microvm,accel=tcg,acpi=on,memory-backend=ram0"},
				"-object":  {"memory-backend-memfd,id=ram0,size=512M,share=on"},
				"-chardev": {"socket,id=fs0,path=/run/cocoon/vm1/virtiofsd-sh0.sock"},
				"-device":  {"vhost-user-fs-device,chardev=fs0,tag=sh0"},
			},
		},
		{
			name:     "simulated confidential",
			launcher: Launcher{Accel: "tcg"},
			cfg: func() hostvmm.Config {
				c := base()
				c.Confidential, c.HostData = hostvmm.ConfidentialSimulated, hostData
				return c
			},
			appendIn: []string{"cocoon.attestation=simulated", "cocoon.sim_host_data=" + hex.EncodeToString(hostData[:]), "cocoon.sim_measurement="},
		},
		{
			name:     "snp refused without an snp host",
			launcher: Launcher{Accel: "kvm", SNPHost: func() bool { return false }, Firmware: kernel},
			cfg: func() hostvmm.Config {
				c := base()
				c.Confidential = hostvmm.ConfidentialSNP
				return c
			},
			err: errdefs.ErrFailedPrecondition,
		},
		{
			name:     "snp refused without firmware",
			launcher: Launcher{Accel: "kvm", SNPHost: func() bool { return true }},
			cfg: func() hostvmm.Config {
				c := base()
				c.Confidential = hostvmm.ConfidentialSNP
				return c
			},
			err: errdefs.ErrFailedPrecondition,
		},
		{
			name:     "snp on an snp host",
			launcher: Launcher{Accel: "kvm", SNPHost: func() bool { return true }, Firmware: "/usr/share/ovmf/OVMF.amdsev.fd"},
			cfg: func() hostvmm.Config {
				c := base()
				c.Confidential, c.HostData = hostvmm.ConfidentialSNP, hostData
				return c
			},
			want: map[string][]string{
				"-machine": {"q35,accel=kvm,confidential-guest-support=sev0,memory-backend=ram0"},
				"-object": {"memory-backend-memfd,id=ram0,size=512M,share=true,prealloc=false",
					"sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on,host-data=AQIDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},
				"-bios":   {"/usr/share/ovmf/OVMF.amdsev.fd"},
				"-device": {"virtio-serial-pci"},
			},
			appendIn: []string{"cocoon.attestation=snp"},
			appendNo: []string{"cocoon.sim_"},
		},
		{
			name:     "bad accelerator",
			launcher: Launcher{Accel: "hvf"},
			cfg:      base,
			err:      errdefs.ErrInvalidArgument,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg()
			if err := hostvmm.Validate(&cfg, hostvmm.Requirements{Kernel: true}); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			args, err := tt.launcher.Args(&cfg)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("Args error = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Args: %v", err)
			}
			for flag, wants := range tt.want {
				got := argValues(args, flag)
				for _, w := range wants {
					if !slices.Contains(got, w) {
						t.Errorf("%s values = %q, want one to be %q", flag, got, w)
					}
				}
			}
			app := argValues(args, "-append")
			if len(app) != 1 {
				t.Fatalf("-append given %d times, want 1", len(app))
			}
			for _, s := range tt.appendIn {
				if !strings.Contains(app[0], s) {
					t.Errorf("-append %q lacks %q", app[0], s)
				}
			}
			for _, s := range tt.appendNo {
				if strings.Contains(app[0], s) {
					t.Errorf("-append %q has %q", app[0], s)
				}
			}
		})
	}
}

func TestSimulatedMeasurementOnCmdline(t *testing.T) {
	kernel, initrd := bootFiles(t)
	cfg := hostvmm.Config{ID: "vm1", StateDir: "/run/cocoon/vm1", Kernel: kernel, Initrd: initrd,
		Cmdline: "console=ttyS0", Confidential: hostvmm.ConfidentialSimulated}
	if err := hostvmm.Validate(&cfg, hostvmm.Requirements{Kernel: true}); err != nil {
		t.Fatal(err)
	}
	args, err := (&Launcher{Accel: "tcg"}).Args(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	app := argValues(args, "-append")[0]
	var k, i [32]byte
	copy(k[:], sha256Of(t, kernel))
	copy(i[:], sha256Of(t, initrd))
	want := rootfs.SimulatedMeasurement(k, i, rootfs.BaseCmdline(app))
	if !strings.Contains(app, "cocoon.sim_measurement="+hex.EncodeToString(want[:])) {
		t.Fatalf("-append %q: want cocoon.sim_measurement=%x", app, want)
	}
}

// fakeQEMU writes an executable script standing in for QEMU.
func fakeQEMU(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fake-qemu")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestStartFailureCleansUp covers a QEMU that dies at once and one that
// never opens its QMP socket: Start fails with the reason and leaves no
// state directory and no process behind.
func TestStartFailureCleansUp(t *testing.T) {
	kernel, initrd := bootFiles(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	tests := []struct {
		name     string
		launcher Launcher
		wantErr  string
	}{
		{"qemu exits", Launcher{Accel: "tcg", Binary: fakeQEMU(t, `echo "bad device" >&2; exit 1`)}, "qemu exited"},
		{"qmp never answers", Launcher{Accel: "tcg", StartTimeout: 300 * time.Millisecond,
			Binary: fakeQEMU(t, `echo $$ > `+pidFile+`; exec sleep 60`)}, "connect qmp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(pidFile)
			state := filepath.Join(shortTempDir(t), "state")
			sb, err := tt.launcher.Start(context.Background(), hostvmm.Config{ID: "vm1", StateDir: state, Kernel: kernel, Initrd: initrd})
			if err == nil {
				sb.Cleanup()
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Start error = %v, want one containing %q", err, tt.wantErr)
			}
			if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("state dir after failed start: %v, want it removed", err)
			}
			if b, err := os.ReadFile(pidFile); err == nil {
				var pid int
				for _, c := range strings.TrimSpace(string(b)) {
					pid = pid*10 + int(c-'0')
				}
				if err := syscall.Kill(pid, 0); err == nil {
					t.Errorf("fake qemu pid %d still alive after failed start", pid)
				}
			}
		})
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	kernel, initrd := bootFiles(t)
	tests := []struct {
		name string
		cfg  hostvmm.Config
	}{
		{"bad id", hostvmm.Config{ID: "../x", StateDir: t.TempDir(), Kernel: kernel, Initrd: initrd}},
		{"relative state dir", hostvmm.Config{ID: "a", StateDir: "state", Kernel: kernel, Initrd: initrd}},
		{"missing kernel", hostvmm.Config{ID: "a", StateDir: t.TempDir(), Kernel: "/nonexistent/vmlinuz", Initrd: initrd}},
		{"sim params from caller", hostvmm.Config{ID: "a", StateDir: t.TempDir(), Kernel: kernel, Initrd: initrd, Cmdline: "cocoon.sim_host_data=00"}},
		{"huge memory", hostvmm.Config{ID: "a", StateDir: t.TempDir(), Kernel: kernel, Initrd: initrd, MemoryMiB: 1 << 30}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb, err := (&Launcher{Accel: "tcg"}).Start(context.Background(), tt.cfg)
			if err == nil {
				sb.Cleanup()
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("Start error = %v, want invalid argument", err)
			}
		})
	}
}

var (
	imageOnce sync.Once
	image     *vmtest.Image
	imageErr  error
)

// helloImage builds the hello-world image once per package run.
func helloImage(t *testing.T) *vmtest.Image {
	t.Helper()
	imageOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cocoon-qemu-test-")
		if err != nil {
			imageErr = err
			return
		}
		image, imageErr = vmtest.HelloImage(context.Background(), dir)
	})
	if imageErr != nil {
		t.Fatal(imageErr)
	}
	return image
}

func TestMain(m *testing.M) {
	code := m.Run()
	if image != nil {
		os.RemoveAll(filepath.Dir(image.Kernel))
	}
	vmtest.RemoveShared()
	os.Exit(code)
}

// boot starts a TCG VM with the hello image and registers its cleanup.
func boot(t *testing.T, cfg hostvmm.Config) hostvmm.Sandbox {
	t.Helper()
	img := helloImage(t)
	cfg.ID = fmt.Sprintf("test-%d", vmCount.Add(1))
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(shortTempDir(t), "state")
	}
	cfg.Kernel, cfg.Initrd = img.Kernel, img.Initrd
	cfg.Cmdline = strings.TrimSpace("console=ttyS0 quiet panic=-1 " + cfg.Cmdline)
	l := &Launcher{Accel: "tcg", QuitTimeout: time.Minute}
	if strings.Contains(cfg.Cmdline, "hello.share_type=virtiofs") {
		l.SharedFS = "virtiofs"
	}
	sb, err := l.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		if err := sb.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return sb
}

// health dials the agent channel and returns the agent version.
func health(t *testing.T, sb hostvmm.Sandbox, service string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	conn, err := sb.DialAgent(ctx)
	if err != nil {
		t.Fatalf("dial agent: %v", err)
	}
	c := ttrpc.NewClient(conn)
	defer c.Close()
	h := agentpb.NewHealthClient(c)
	v, err := h.Version(ctx, &agentpb.CheckRequest{})
	if err != nil {
		t.Fatalf("Health.Version: %v (console: %s)", err, readFile(sb.ConsoleLog()))
	}
	if service != "" {
		if _, err := h.Check(ctx, &agentpb.CheckRequest{Service: service}); err != nil {
			t.Fatalf("Health.Check(%s): %v", service, err)
		}
	}
	return v.AgentVersion
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func waitExit(t *testing.T, sb hostvmm.Sandbox) hostvmm.ExitInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := sb.Wait(ctx)
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	return e
}

// assertGone checks that a cleaned-up sandbox left nothing behind.
func assertGone(t *testing.T, sb hostvmm.Sandbox, stateDir string) {
	t.Helper()
	if err := sb.Cleanup(); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if _, err := os.Stat(stateDir); !errors.Is(err, os.ErrNotExist) {
		entries, _ := os.ReadDir(stateDir)
		t.Fatalf("state dir after cleanup: %v (entries %v), want it removed", err, entries)
	}
}

// TestBoot boots the hello image under TCG: the guest loads its virtio
// modules, reads a file the host shared over 9p and answers, and serves
// Health over the virtio-serial agent channel; then it powers itself off,
// and the other paths (QMP quit, kill -9) are exercised on further VMs.
func TestBoot(t *testing.T) {
	vmtest.RequireRoot(t)
	helloImage(t)

	for _, fs := range []string{"9p", "virtiofs"} {
		t.Run("agent channel, "+fs+" share and guest poweroff", func(t *testing.T) {
			t.Parallel()
			bootShareAndPoweroff(t, fs)
		})
	}

	t.Run("stop and kill", func(t *testing.T) {
		t.Parallel()
		stateStop := filepath.Join(shortTempDir(t), "state")
		stateKill := filepath.Join(shortTempDir(t), "state")
		stop := boot(t, hostvmm.Config{StateDir: stateStop, Cmdline: "hello.token=t2"})
		kill := boot(t, hostvmm.Config{StateDir: stateKill, Cmdline: "hello.token=t3"})
		if got, want := health(t, stop, ""), "hello-t2"; got != want {
			t.Errorf("agent version = %q, want %q", got, want)
		}
		for i := 0; i < 2; i++ {
			if err := stop.Stop(context.Background()); err != nil {
				t.Fatalf("stop #%d: %v", i+1, err)
			}
		}
		if got, want := waitExit(t, stop).Reason, "shutdown (host-qmp-quit)"; got != want {
			t.Errorf("exit reason after stop = %q, want %q", got, want)
		}
		assertGone(t, stop, stateStop)

		pid := qemuPid(t, kill)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		e := waitExit(t, kill)
		if got, want := e.Reason, "killed by signal 9"; got != want || e.Signal != syscall.SIGKILL {
			t.Errorf("exit after kill -9 = %+v, want reason %q", e, want)
		}
		if _, err := kill.DialAgent(context.Background()); !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("dial agent of a dead VM: %v, want unavailable", err)
		}
		assertGone(t, kill, stateKill)
	})
}

func qemuPid(t *testing.T, sb hostvmm.Sandbox) int {
	t.Helper()
	s, ok := sb.(*sandbox)
	if !ok {
		t.Fatalf("sandbox type %T", sb)
	}
	return s.proc.Pid()
}

func sha256Of(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return s[:]
}

// bootShareAndPoweroff boots a VM sharing a directory over fs, checks the
// agent channel and the guest's answer in the share, then lets the guest
// power itself off and checks that cleanup leaves nothing.
func bootShareAndPoweroff(t *testing.T, fs string) {
	share := shortTempDir(t)
	if err := os.WriteFile(filepath.Join(share, "from-host"), []byte("cocoon\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(shortTempDir(t), "state")
	sb := boot(t, hostvmm.Config{StateDir: state, Cmdline: "hello.token=t1 hello.share=shared hello.share_type=" + fs,
		SharedDirs: []hostvmm.SharedDir{{Tag: "shared", HostPath: share}}})

	if got, want := sb.AgentAddr(), "unix://"+filepath.Join(state, "agent.sock"); got != want {
		t.Errorf("agent addr = %q, want %q", got, want)
	}
	if got, want := health(t, sb, "poweroff"), "hello-t1"; got != want {
		t.Errorf("agent version = %q, want %q", got, want)
	}
	if got, want := readFile(filepath.Join(share, "from-guest")), "noococ"; got != want {
		t.Errorf("guest's answer in the share = %q, want %q", got, want)
	}
	e := waitExit(t, sb)
	if got, want := e.Reason, "shutdown (guest-shutdown)"; got != want {
		t.Errorf("exit reason = %q, want %q", got, want)
	}
	if !strings.Contains(readFile(sb.ConsoleLog()), "helloinit: serving health") {
		t.Errorf("console log lacks the init's message:\n%s", readFile(sb.ConsoleLog()))
	}
	if err := sb.Stop(context.Background()); err != nil {
		t.Errorf("stop after exit: %v", err)
	}
	assertGone(t, sb, state)
}

func TestRunsUnderHypervisor(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		flags string
		want  bool
	}{
		{"fpu vme de pse tsc msr hypervisor lahf_lm", true},
		{"fpu vme de pse tsc msr lahf_lm", false},
	} {
		p := filepath.Join(dir, "cpuinfo")
		body := "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: " + tt.flags + "\nbugs\t\t: sysret_ss_attrs\n"
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := runsUnderHypervisor(p); got != tt.want {
			t.Errorf("flags %q: got %v, want %v", tt.flags, got, tt.want)
		}
	}
	t.Setenv("COCOON_QEMU_ACCEL", "tcg")
	if KVMUsable() {
		t.Error("COCOON_QEMU_ACCEL=tcg still picks KVM")
	}
}
