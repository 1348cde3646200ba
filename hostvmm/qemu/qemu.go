// Package qemu launches sandboxes with qemu-system-x86_64: KVM when
// /dev/kvm is usable, TCG otherwise. The agent channel is a virtio-serial
// port named agent.channel.0 backed by a host unix socket (the agent
// listens on serial://agent.channel.0, which the launcher puts on the
// kernel command line as agent.server_addr unless the caller set an
// address; the host dials unix://SOCKET); shared directories travel over
// virtio-9p or virtio-fs; QMP stops the VM.
package qemu

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cocoon-containers/cocoon/hostvmm"
	"github.com/cocoon-containers/cocoon/rpc/transport"
)

// Machine types.
const (
	MachineMicroVM = "microvm" // virtio-mmio devices, fastest boot
	MachineQ35     = "q35"     // virtio-pci devices, needed for SNP
)

// Launcher starts QEMU sandboxes. The zero value is usable.
type Launcher struct {
	// Binary is the QEMU executable (default qemu-system-x86_64 on PATH).
	Binary string
	// Accel is "kvm", "tcg" or empty for KVM when /dev/kvm is usable.
	Accel string
	// Machine is microvm (default) or q35; SNP always uses q35.
	Machine string
	// SharedFS is how shared directories travel: "9p" (default) or
	// "virtiofs" (one virtiofsd per directory, guest memory shared).
	SharedFS string
	// Virtiofsd is the virtiofsd binary (default: virtiofsd on PATH, else
	// /usr/lib/qemu/virtiofsd).
	Virtiofsd string
	// Firmware is the OVMF image an SNP guest boots with.
	Firmware string
	// StartTimeout bounds the wait for QEMU's QMP socket (default 30s).
	StartTimeout time.Duration
	// PowerdownTimeout is how long Stop waits after an ACPI power-button
	// press; zero skips the power button and goes straight to QMP quit.
	PowerdownTimeout time.Duration
	// QuitTimeout is how long Stop waits after QMP quit before SIGKILL
	// (default 10s, 30s for confidential guests).
	QuitTimeout time.Duration
	// Logger receives launcher events (default slog.Default()).
	Logger *slog.Logger
	// SNPHost overrides the detection of an SEV-SNP capable host (tests).
	SNPHost func() bool
}

// KVMUsable reports whether QEMU should use KVM: /dev/kvm opens for
// reading and writing and this host is not itself a guest, unless
// COCOON_QEMU_ACCEL says kvm or tcg.
func KVMUsable() bool {
	switch os.Getenv("COCOON_QEMU_ACCEL") {
	case "tcg":
		return false
	case "kvm":
		return kvmOpens()
	}
	// Nested KVM (this host is itself a guest) is often unusable even
	// when /dev/kvm opens: seen here, QEMU aborts setting an MSR or the
	// guest hangs early in boot. It is used only when asked for.
	return kvmOpens() && !runsUnderHypervisor("/proc/cpuinfo")
}

func kvmOpens() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// runsUnderHypervisor reports whether the CPU flags carry "hypervisor".
func runsUnderHypervisor(cpuinfo string) bool {
	b, err := os.ReadFile(cpuinfo)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == "flags" {
			return slices.Contains(strings.Fields(v), "hypervisor")
		}
	}
	return false
}

// SNPHostAvailable reports whether the host can launch SEV-SNP guests:
// usable /dev/kvm, /dev/sev and kvm_amd with sev_snp enabled.
func SNPHostAvailable() bool {
	b, err := os.ReadFile("/sys/module/kvm_amd/parameters/sev_snp")
	if err != nil || !strings.HasPrefix(strings.TrimSpace(string(b)), "Y") && strings.TrimSpace(string(b)) != "1" {
		return false
	}
	if _, err := os.Stat("/dev/sev"); err != nil {
		return false
	}
	return KVMUsable()
}

// TSCKHz is the host TSC frequency in kHz from /proc/cpuinfo ("cpu MHz"),
// or 2 GHz when it cannot be read. Under TCG the guest kernel gets it as
// tsc_early_khz so that it does not hang calibrating the TSC.
func TSCKHz() int {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 2000000
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz < 100 || mhz > 10000 {
			break
		}
		return int(mhz * 1000)
	}
	return 2000000
}

// files are the launcher's paths inside the state directory.
type files struct {
	qmp, agent, console string
}

func stateFiles(cfg *hostvmm.Config) files {
	return files{
		qmp:     filepath.Join(cfg.StateDir, "qmp.sock"),
		agent:   filepath.Join(cfg.StateDir, "agent.sock"),
		console: cfg.ConsoleLog,
	}
}

// Args builds QEMU's command line for cfg (already validated) without
// starting anything.
func (l *Launcher) Args(cfg *hostvmm.Config) ([]string, error) {
	accel := l.Accel
	if accel == "" {
		accel = "tcg"
		if KVMUsable() {
			accel = "kvm"
		}
	}
	if accel != "kvm" && accel != "tcg" {
		return nil, fmt.Errorf("qemu accelerator %q: want kvm or tcg: %w", accel, errdefs.ErrInvalidArgument)
	}
	machine := l.Machine
	if machine == "" {
		machine = MachineMicroVM
	}
	snp := cfg.Confidential == hostvmm.ConfidentialSNP
	if snp {
		isSNP := SNPHostAvailable
		if l.SNPHost != nil {
			isSNP = l.SNPHost
		}
		if !isSNP() || accel != "kvm" {
			return nil, fmt.Errorf("confidential=snp needs an SEV-SNP host (kvm_amd sev_snp=Y, /dev/sev, /dev/kvm); use confidential=simulated on this machine: %w", errdefs.ErrFailedPrecondition)
		}
		if l.Firmware == "" {
			return nil, fmt.Errorf("confidential=snp needs an OVMF firmware image (Launcher.Firmware): %w", errdefs.ErrFailedPrecondition)
		}
		machine = MachineQ35
	}
	if machine != MachineMicroVM && machine != MachineQ35 {
		return nil, fmt.Errorf("qemu machine %q: want microvm or q35: %w", machine, errdefs.ErrInvalidArgument)
	}
	// Device model names differ between the virtio-mmio and virtio-pci
	// transports.
	dev := func(name string) string {
		if machine == MachineMicroVM {
			return name + "-device"
		}
		return name + "-pci"
	}

	var extra []string
	if !strings.Contains(" "+cfg.Cmdline, " agent.server_addr=") && !strings.Contains(" "+cfg.Cmdline, " cocoon.server_addr=") {
		extra = append(extra, "agent.server_addr=serial://"+hostvmm.AgentChannel)
	}
	if accel == "tcg" && !strings.Contains(" "+cfg.Cmdline, " tsc_early_khz=") {
		// A command line that already names it (one a rootfs manifest
		// measured) keeps its value.
		extra = append(extra, "tsc_early_khz="+strconv.Itoa(TSCKHz()))
	}
	cmdline, err := hostvmm.KernelCmdline(cfg, extra...)
	if err != nil {
		return nil, err
	}
	f := stateFiles(cfg)
	e := hostvmm.Escape

	mopts := machine + ",accel=" + accel
	var args []string
	if machine == MachineMicroVM {
		// Debian's virtio_mmio finds its devices through ACPI. Modern
		// (virtio 1) mmio devices: vhost-user backends refuse legacy ones.
		mopts += ",acpi=on"
		args = append(args, "-global", "virtio-mmio.force-legacy=false")
	}
	cpu := "host"
	if accel == "tcg" {
		cpu = "max"
	}
	memMiB := strconv.Itoa(cfg.MemoryMiB)
	virtiofs := false
	switch l.SharedFS {
	case "", "9p":
	case "virtiofs":
		virtiofs = len(cfg.SharedDirs) > 0
	default:
		return nil, fmt.Errorf("qemu shared fs %q: want 9p or virtiofs: %w", l.SharedFS, errdefs.ErrInvalidArgument)
	}
	if virtiofs {
		// vhost-user devices need guest memory the daemon can map.
		mopts += ",memory-backend=ram0"
		args = append(args, "-object", "memory-backend-memfd,id=ram0,size="+memMiB+"M,share=on")
	}
	if snp {
		mopts += ",confidential-guest-support=sev0,memory-backend=ram0"
		cpu = "EPYC-v4"
		args = append(args,
			"-object", "memory-backend-memfd,id=ram0,size="+memMiB+"M,share=true,prealloc=false",
			"-object", "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on,host-data="+
				base64.StdEncoding.EncodeToString(cfg.HostData[:]),
			"-bios", e(l.Firmware),
		)
	}
	args = append([]string{
		"-name", "cocoon-" + cfg.ID,
		"-machine", mopts,
		"-cpu", cpu,
		"-smp", strconv.Itoa(cfg.VCPUs),
		"-m", memMiB + "M",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", cfg.Kernel,
		"-initrd", cfg.Initrd,
		"-append", cmdline,
		"-chardev", "file,id=console,path=" + e(f.console),
		"-serial", "chardev:console",
		"-qmp", "unix:" + e(f.qmp) + ",server=on,wait=off",
		"-chardev", "socket,id=agent,path=" + e(f.agent) + ",server=on,wait=off",
		"-device", dev("virtio-serial"),
		"-device", "virtserialport,chardev=agent,name=" + hostvmm.AgentChannel,
	}, args...)
	disks := cfg.Disks
	if cfg.Image != "" {
		disks = append([]hostvmm.Disk{{Path: cfg.Image, ReadOnly: true}}, disks...)
	}
	for i, d := range disks {
		id := "disk" + strconv.Itoa(i)
		opt := "file=" + e(d.Path) + ",if=none,id=" + id + ",format=raw,cache=none,aio=threads"
		if d.ReadOnly {
			opt += ",readonly=on"
		}
		args = append(args, "-drive", opt, "-device", dev("virtio-blk")+",drive="+id)
	}
	if n := cfg.Network; n != nil {
		// restrict=on: the guest reaches nothing but the guestfwd rules.
		opt := "user,id=net0,restrict=on,net=10.0.2.0/24,host=" + hostvmm.GatewayIP + ",ipv6=off"
		// Each guest connection runs its own relay (busybox nc) to the
		// host service: a "tcp:" target would be one connection made
		// when QEMU starts, failing the launch while the service is down
		// and breaking for good when it restarts.
		relay, err := exec.LookPath("busybox")
		if err != nil {
			return nil, fmt.Errorf("network forwards need busybox (Debian busybox-static) for their relay: %w", errdefs.ErrFailedPrecondition)
		}
		for _, f := range n.Forwards {
			host, port, _ := net.SplitHostPort(f.HostAddr)
			opt += ",guestfwd=tcp:" + hostvmm.ServiceIP + ":" + strconv.Itoa(f.GuestPort) + "-cmd:" + relay + " nc " + host + " " + port
		}
		args = append(args, "-netdev", opt, "-device", dev("virtio-net")+",netdev=net0,mac="+hostvmm.GuestMAC)
	}
	for i, s := range cfg.SharedDirs {
		id := "fs" + strconv.Itoa(i)
		if virtiofs {
			args = append(args,
				"-chardev", "socket,id="+id+",path="+e(hostvmm.VirtiofsdSocket(cfg.StateDir, s.Tag)),
				"-device", dev("vhost-user-fs")+",chardev="+id+",tag="+s.Tag)
			continue
		}
		opt := "local,id=" + id + ",path=" + e(s.HostPath) + ",security_model=none"
		if s.ReadOnly {
			opt += ",readonly=on"
		}
		args = append(args, "-fsdev", opt, "-device", dev("virtio-9p")+",fsdev="+id+",mount_tag="+s.Tag)
	}
	return args, nil
}

// Start launches QEMU and returns once its QMP socket answers; the guest
// may still be booting (DialAgent waits for the agent).
func (l *Launcher) Start(ctx context.Context, cfg hostvmm.Config) (hostvmm.Sandbox, error) {
	if err := hostvmm.Validate(&cfg, hostvmm.Requirements{Kernel: true}); err != nil {
		return nil, err
	}
	args, err := l.Args(&cfg)
	if err != nil {
		return nil, err
	}
	bin := l.Binary
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("find qemu %s: %w", bin, errdefs.ErrNotFound.WithMessage(err.Error()))
	}
	log := l.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("sandbox_id", cfg.ID, "launcher", "qemu")

	s := &sandbox{cfg: cfg, files: stateFiles(&cfg), log: log}
	s.quitTimeout = l.QuitTimeout
	if s.quitTimeout <= 0 {
		s.quitTimeout = 10 * time.Second
		if cfg.Confidential != hostvmm.ConfidentialNone {
			s.quitTimeout = 30 * time.Second
		}
	}
	s.powerdownTimeout = l.PowerdownTimeout
	if err := s.prepareStateDir(); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			s.Cleanup()
		}
	}()

	if l.SharedFS == "virtiofs" && len(cfg.SharedDirs) > 0 {
		v, err := hostvmm.FindVirtiofsd(l.Virtiofsd)
		if err != nil {
			return nil, fmt.Errorf("sandbox %s: %w", cfg.ID, err)
		}
		for _, d := range cfg.SharedDirs {
			p, err := v.Start(cfg.StateDir, d, &s.made)
			if p != nil {
				s.helpers = append(s.helpers, p)
			}
			if err != nil {
				return nil, fmt.Errorf("sandbox %s: %w", cfg.ID, err)
			}
		}
	}

	stderr, err := os.OpenFile(filepath.Join(cfg.StateDir, "qemu.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", cfg.ID, err)
	}
	s.made = append(s.made, stderr.Name())
	cmd := exec.Command(path, args...)
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	cmd.Dir = cfg.StateDir
	p, err := hostvmm.StartProcess(cmd)
	stderr.Close()
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", cfg.ID, err)
	}
	s.proc = p
	log.Debug("qemu started", "pid", p.Pid())

	timeout := l.StartTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	qctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	q, err := dialQMP(qctx, s.files.qmp, p.Done())
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w%s", cfg.ID, err, s.qemuLogTail())
	}
	s.qmp = q
	ok = true
	return s, nil
}

type sandbox struct {
	cfg              hostvmm.Config
	files            files
	log              *slog.Logger
	proc             *hostvmm.Process
	helpers          []*hostvmm.Process // virtiofsd
	qmp              *qmp
	quitTimeout      time.Duration
	powerdownTimeout time.Duration

	createdDir bool
	made       []string // files to remove on cleanup

	stopMu sync.Mutex
}

func (s *sandbox) prepareStateDir() error {
	if _, err := os.Stat(s.cfg.StateDir); errors.Is(err, os.ErrNotExist) {
		s.createdDir = true
	}
	if err := os.MkdirAll(s.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("sandbox %s: state dir: %w", s.cfg.ID, err)
	}
	for _, p := range []string{s.files.qmp, s.files.agent} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("sandbox %s: %s exists: another sandbox uses this state dir: %w", s.cfg.ID, p, errdefs.ErrAlreadyExists)
		}
	}
	s.made = append(s.made, s.files.qmp, s.files.agent)
	if s.files.console == filepath.Join(s.cfg.StateDir, "console.log") {
		s.made = append(s.made, s.files.console)
	}
	return nil
}

func (s *sandbox) qemuLogTail() string {
	b, err := os.ReadFile(filepath.Join(s.cfg.StateDir, "qemu.log"))
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return ": qemu: " + strings.TrimSpace(string(b))
}

func (s *sandbox) AgentAddr() string { return "unix://" + s.files.agent }

func (s *sandbox) ConsoleLog() string { return s.files.console }

// DialAgent connects to QEMU's end of the virtio-serial port. The
// connection succeeds as soon as QEMU runs; bytes flow once the agent
// opens the port, so the first RPC waits for the agent to come up.
//
// The port carries one stream: QEMU serves one connection at a time, and
// a guest that does not notice a quick hang-up and reconnect keeps its old
// ttrpc session (a new client's first stream id is then refused). Keep one
// connection for the sandbox's life.
func (s *sandbox) DialAgent(ctx context.Context) (net.Conn, error) {
	if s.proc.Exited() {
		return nil, fmt.Errorf("sandbox %s: dial agent: vm has exited (%s): %w", s.cfg.ID, s.exit().Reason, errdefs.ErrUnavailable)
	}
	c, err := transport.Dial(ctx, s.AgentAddr())
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: dial agent: %w", s.cfg.ID, err)
	}
	return c, nil
}

// exit is the ExitInfo of a finished QEMU, with the shutdown reason QMP
// reported.
func (s *sandbox) exit() hostvmm.ExitInfo {
	e := s.proc.Exit()
	if e.Signal != 0 {
		return e
	}
	// QEMU closes QMP as it exits; let the reader record the last event.
	select {
	case <-s.qmp.closed:
	case <-time.After(5 * time.Second):
	}
	if r := s.qmp.shutdownReason(); r != "" && e.Code == 0 {
		e.Reason = "shutdown (" + r + ")"
	}
	return e
}

func (s *sandbox) Wait(ctx context.Context) (hostvmm.ExitInfo, error) {
	select {
	case <-s.proc.Done():
		return s.exit(), nil
	case <-ctx.Done():
		return hostvmm.ExitInfo{}, fmt.Errorf("sandbox %s: wait: %w", s.cfg.ID, ctx.Err())
	}
}

// Stop presses the power button (when PowerdownTimeout is set), then asks
// QEMU to quit over QMP, then kills it.
func (s *sandbox) Stop(ctx context.Context) error {
	s.stopMu.Lock()
	defer s.stopMu.Unlock()
	if err := s.stopVM(ctx); err != nil {
		return err
	}
	for _, h := range s.helpers {
		if err := h.Terminate(syscall.SIGTERM, 5*time.Second); err != nil {
			return fmt.Errorf("sandbox %s: stop virtiofsd: %w", s.cfg.ID, err)
		}
	}
	return nil
}

func (s *sandbox) stopVM(ctx context.Context) error {
	if s.proc.Exited() {
		return nil
	}
	if s.powerdownTimeout > 0 {
		if err := s.qmpStep(ctx, "system_powerdown", s.powerdownTimeout); err == nil {
			return nil
		}
	}
	err := s.qmpStep(ctx, "quit", s.quitTimeout)
	if err == nil {
		return nil
	}
	s.log.Warn("qemu did not quit, killing it", "error", err)
	if err := s.proc.Kill(10 * time.Second); err != nil {
		return fmt.Errorf("sandbox %s: stop: %w", s.cfg.ID, err)
	}
	return nil
}

// qmpStep sends cmd and waits up to timeout for QEMU to exit.
func (s *sandbox) qmpStep(ctx context.Context, cmd string, timeout time.Duration) error {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := s.qmp.execute(cctx, cmd); err != nil && !errors.Is(err, errQMPClosed) {
		if s.proc.Exited() {
			return nil
		}
		return err
	}
	select {
	case <-s.proc.Done():
		return nil
	case <-cctx.Done():
		return fmt.Errorf("qemu still running %s after %s", timeout, cmd)
	}
}

// Cleanup kills QEMU if it still runs and removes its sockets and logs.
func (s *sandbox) Cleanup() error {
	return hostvmm.Leftovers{
		Procs:          append([]*hostvmm.Process{s.proc}, s.helpers...),
		Files:          s.made,
		StateDir:       s.cfg.StateDir,
		RemoveStateDir: s.createdDir,
	}.Cleanup(s.cfg.ID, s.closeQMP)
}

func (s *sandbox) closeQMP() {
	if s.qmp != nil {
		s.qmp.close()
	}
}
