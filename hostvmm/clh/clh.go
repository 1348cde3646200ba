// Package clh launches sandboxes with cloud-hypervisor, the production
// VMM: it drives the REST API on --api-socket (vmm.ping, vm.create,
// vm.info, vm.boot, vm.shutdown, vmm.shutdown), starts one virtiofsd per
// shared directory, and reaches the agent over the hybrid vsock socket
// (hvsock://SOCKET:1024). SEV-SNP guests boot from an IGVM image with
// HOST_DATA; the launch is refused when the binary lacks the features.
// cloud-hypervisor needs KVM or MSHV.
package clh

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
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

// GuestCID is the guest's vsock context id.
const GuestCID = 3

// Launcher starts cloud-hypervisor sandboxes. The zero value is usable.
type Launcher struct {
	// Binary is the cloud-hypervisor executable (default: on PATH).
	Binary string
	// Virtiofsd serves shared directories (default: virtiofsd on PATH, else
	// /usr/lib/qemu/virtiofsd).
	Virtiofsd string
	// StartTimeout bounds the wait for the API socket and the boot
	// (default 10s, 30s for confidential guests).
	StartTimeout time.Duration
	// ShutdownTimeout is how long Stop waits for the VMM to exit before
	// SIGKILL (default 10s, 30s for confidential guests).
	ShutdownTimeout time.Duration
	// Logger receives launcher events (default slog.Default()).
	Logger *slog.Logger
}

// Features are the capabilities vmm.ping reports.
const (
	FeatureKVM    = "kvm"
	FeatureMSHV   = "mshv"
	FeatureSevSnp = "sev_snp"
	FeatureIGVM   = "igvm"
)

type paths struct {
	api, vsock, console, log string
}

func statePaths(cfg *hostvmm.Config) paths {
	return paths{
		api:     filepath.Join(cfg.StateDir, "api.sock"),
		vsock:   filepath.Join(cfg.StateDir, "vsock.sock"),
		console: cfg.ConsoleLog,
		log:     filepath.Join(cfg.StateDir, "clh.log"),
	}
}

// VMConfig builds the vm.create body for cfg (already validated).
func VMConfig(cfg *hostvmm.Config) (*VmConfig, error) {
	p := statePaths(cfg)
	vc := &VmConfig{
		CPUs:    CpusConfig{BootVCPUs: cfg.VCPUs, MaxVCPUs: cfg.VCPUs},
		Memory:  MemoryConfig{Size: int64(cfg.MemoryMiB) << 20, Shared: len(cfg.SharedDirs) > 0},
		Serial:  &ConsoleConfig{Mode: ConsoleFile, File: p.console},
		Console: &ConsoleConfig{Mode: ConsoleOff},
		Vsock:   &VsockConfig{CID: GuestCID, Socket: p.vsock},
	}
	if cfg.Confidential == hostvmm.ConfidentialSNP {
		if cfg.IGVM == "" {
			return nil, fmt.Errorf("confidential=snp under cloud-hypervisor boots an IGVM image: set IGVM: %w", errdefs.ErrInvalidArgument)
		}
		vc.Payload = PayloadConfig{IGVM: cfg.IGVM, HostData: hex.EncodeToString(cfg.HostData[:])}
		vc.Platform = &PlatformConfig{SevSnp: true}
	} else {
		cmdline, err := hostvmm.KernelCmdline(cfg)
		if err != nil {
			return nil, err
		}
		vc.Payload = PayloadConfig{Kernel: cfg.Kernel, Initramfs: cfg.Initrd, Cmdline: cmdline}
	}
	disks := cfg.Disks
	if cfg.Image != "" {
		disks = append([]hostvmm.Disk{{Path: cfg.Image, ReadOnly: true}}, disks...)
	}
	for i, d := range disks {
		vc.Disks = append(vc.Disks, DiskConfig{Path: d.Path, ReadOnly: d.ReadOnly, ID: "disk" + strconv.Itoa(i)})
	}
	for i, s := range cfg.SharedDirs {
		vc.FS = append(vc.FS, FsConfig{Tag: s.Tag, Socket: hostvmm.VirtiofsdSocket(cfg.StateDir, s.Tag),
			NumQueues: 1, QueueSize: 1024, ID: "fs" + strconv.Itoa(i)})
	}
	return vc, nil
}

// Start launches cloud-hypervisor, creates and boots the VM, and returns
// once the VM runs; DialAgent waits for the agent.
func (l *Launcher) Start(ctx context.Context, cfg hostvmm.Config) (hostvmm.Sandbox, error) {
	req := hostvmm.Requirements{Kernel: cfg.Confidential != hostvmm.ConfidentialSNP}
	if err := hostvmm.Validate(&cfg, req); err != nil {
		return nil, err
	}
	if cfg.Network != nil {
		// cloud-hypervisor networks through tap devices, which this
		// launcher does not make yet.
		return nil, fmt.Errorf("sandbox %s: the cloud-hypervisor launcher has no forwarded network yet (use qemu or process): %w", cfg.ID, errdefs.ErrNotImplemented)
	}
	vc, err := VMConfig(&cfg)
	if err != nil {
		return nil, err
	}
	confidential := cfg.Confidential != hostvmm.ConfidentialNone
	startTimeout := orDefault(l.StartTimeout, confidential)
	log := l.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("sandbox_id", cfg.ID, "launcher", "clh")
	bin := l.Binary
	if bin == "" {
		bin = "cloud-hypervisor"
	}
	binPath, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: find cloud-hypervisor: %w", cfg.ID, errdefs.ErrNotFound.WithMessage(err.Error()))
	}

	s := &sandbox{cfg: cfg, paths: statePaths(&cfg), log: log, shutdownTimeout: orDefault(l.ShutdownTimeout, confidential)}
	if _, err := os.Stat(cfg.StateDir); errors.Is(err, os.ErrNotExist) {
		s.createdDir = true
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("sandbox %s: state dir: %w", cfg.ID, err)
	}
	ok := false
	defer func() {
		if !ok {
			s.Cleanup()
		}
	}()
	for _, p := range []string{s.paths.api, s.paths.vsock} {
		if _, err := os.Lstat(p); err == nil {
			return nil, fmt.Errorf("sandbox %s: %s exists: another sandbox uses this state dir: %w", cfg.ID, p, errdefs.ErrAlreadyExists)
		}
		s.made = append(s.made, p)
	}
	s.made = append(s.made, s.paths.log)
	if s.paths.console == filepath.Join(cfg.StateDir, "console.log") {
		s.made = append(s.made, s.paths.console)
	}

	if err := l.startVirtiofsd(s); err != nil {
		return nil, err
	}

	logf, err := os.OpenFile(s.paths.log, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", cfg.ID, err)
	}
	cmd := exec.Command(binPath, "--api-socket", "path="+s.paths.api)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = cfg.StateDir
	p, err := hostvmm.StartProcess(cmd)
	logf.Close()
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", cfg.ID, err)
	}
	s.proc = p
	s.api = newClient(s.paths.api)
	log.Debug("cloud-hypervisor started", "pid", p.Pid())

	sctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := s.boot(sctx, vc); err != nil {
		// A VMM that died mid-request shows up as a connection error or a
		// truncated answer first; give the reaper a moment so the error
		// says how it ended.
		wait := 300 * time.Millisecond
		if errors.Is(err, errAPIUnreachable) {
			wait = 2 * time.Second
		}
		select {
		case <-p.Done():
		case <-time.After(wait):
		}
		if p.Exited() {
			err = fmt.Errorf("%w (cloud-hypervisor %s)", err, p.Exit().Reason)
		}
		return nil, fmt.Errorf("sandbox %s: %w%s", cfg.ID, err, s.logTail())
	}
	ok = true
	return s, nil
}

func orDefault(d time.Duration, confidential bool) time.Duration {
	switch {
	case d > 0:
		return d
	case confidential:
		return 30 * time.Second
	}
	return 10 * time.Second
}

// boot runs the API sequence: ping (and feature check), create, check
// Created, boot, check Running.
func (s *sandbox) boot(ctx context.Context, vc *VmConfig) error {
	var ping VmmPingResponse
	for {
		err := s.api.do(ctx, http.MethodGet, "vmm.ping", nil, &ping)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the cloud-hypervisor api: %w (last: %v)", ctx.Err(), err)
		case <-s.proc.Done():
			return fmt.Errorf("wait for the cloud-hypervisor api: the vmm exited")
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := checkFeatures(&s.cfg, ping.Features); err != nil {
		return err
	}
	if err := s.api.do(ctx, http.MethodPut, "vm.create", vc, nil); err != nil {
		return err
	}
	if err := s.expectState(ctx, StateCreated); err != nil {
		return err
	}
	if err := s.api.do(ctx, http.MethodPut, "vm.boot", nil, nil); err != nil {
		return err
	}
	return s.expectState(ctx, StateRunning)
}

// checkFeatures refuses launches the binary cannot do. Older binaries
// report no feature list; then only a confidential launch is refused.
func checkFeatures(cfg *hostvmm.Config, features []string) error {
	if cfg.Confidential != hostvmm.ConfidentialSNP {
		return nil
	}
	for _, f := range []string{FeatureSevSnp, FeatureIGVM} {
		if !slices.Contains(features, f) {
			return fmt.Errorf("confidential=snp: this cloud-hypervisor lacks the %q feature (it reports %v); build it with --features %s or use confidential=simulated: %w",
				f, features, f, errdefs.ErrFailedPrecondition)
		}
	}
	return nil
}

func (s *sandbox) expectState(ctx context.Context, want VMState) error {
	var info VmInfo
	if err := s.api.do(ctx, http.MethodGet, "vm.info", nil, &info); err != nil {
		return err
	}
	if info.State != want {
		return fmt.Errorf("vm state %q, want %q", info.State, want)
	}
	return nil
}

// startVirtiofsd starts one virtiofsd per shared directory.
func (l *Launcher) startVirtiofsd(s *sandbox) error {
	if len(s.cfg.SharedDirs) == 0 {
		return nil
	}
	v, err := hostvmm.FindVirtiofsd(l.Virtiofsd)
	if err != nil {
		return fmt.Errorf("sandbox %s: %w", s.cfg.ID, err)
	}
	for _, d := range s.cfg.SharedDirs {
		p, err := v.Start(s.cfg.StateDir, d, &s.made)
		if p != nil {
			s.helpers = append(s.helpers, p)
		}
		if err != nil {
			return fmt.Errorf("sandbox %s: %w", s.cfg.ID, err)
		}
	}
	return nil
}

type sandbox struct {
	cfg             hostvmm.Config
	paths           paths
	log             *slog.Logger
	proc            *hostvmm.Process
	helpers         []*hostvmm.Process // virtiofsd
	api             *client
	shutdownTimeout time.Duration
	createdDir      bool
	made            []string

	mu      sync.Mutex
	stopped bool
}

func (s *sandbox) logTail() string {
	b, err := os.ReadFile(s.paths.log)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return ": cloud-hypervisor: " + strings.TrimSpace(string(b))
}

func (s *sandbox) AgentAddr() string {
	return "hvsock://" + s.paths.vsock + ":" + strconv.Itoa(hostvmm.AgentPort)
}

func (s *sandbox) ConsoleLog() string { return s.paths.console }

// DialAgent dials the agent through the hybrid vsock socket, retrying
// until ctx is done or the VMM exits.
func (s *sandbox) DialAgent(ctx context.Context) (net.Conn, error) {
	if s.proc.Exited() {
		return nil, fmt.Errorf("sandbox %s: dial agent: vm has exited (%s): %w", s.cfg.ID, s.proc.Exit().Reason, errdefs.ErrUnavailable)
	}
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.proc.Done():
			cancel()
		case <-dctx.Done():
		}
	}()
	c, err := transport.Dial(dctx, s.AgentAddr())
	if err != nil {
		if s.proc.Exited() {
			return nil, fmt.Errorf("sandbox %s: dial agent: vm has exited (%s): %w", s.cfg.ID, s.proc.Exit().Reason, errdefs.ErrUnavailable)
		}
		return nil, fmt.Errorf("sandbox %s: dial agent: %w", s.cfg.ID, err)
	}
	return c, nil
}

func (s *sandbox) exit() hostvmm.ExitInfo {
	e := s.proc.Exit()
	s.mu.Lock()
	stopped := s.stopped
	s.mu.Unlock()
	if stopped && e.Signal == 0 && e.Code == 0 {
		e.Reason = "shutdown (host request)"
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

// Stop shuts the VM and then the VMM down over the API, then kills the VMM
// after ShutdownTimeout; virtiofsd goes with it.
func (s *sandbox) Stop(ctx context.Context) error {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	if !s.proc.Exited() {
		sctx, cancel := context.WithTimeout(ctx, s.shutdownTimeout)
		defer cancel()
		if err := s.api.do(sctx, http.MethodPut, "vm.shutdown", nil, nil); err != nil {
			s.log.Debug("vm.shutdown failed", "error", err)
		}
		if err := s.api.do(sctx, http.MethodPut, "vmm.shutdown", nil, nil); err != nil {
			s.log.Debug("vmm.shutdown failed", "error", err)
		}
		select {
		case <-s.proc.Done():
		case <-sctx.Done():
			s.log.Warn("cloud-hypervisor did not exit, killing it", "timeout", s.shutdownTimeout)
			if err := s.proc.Kill(10 * time.Second); err != nil {
				return fmt.Errorf("sandbox %s: stop: %w", s.cfg.ID, err)
			}
		}
	}
	for _, h := range s.helpers {
		if err := h.Terminate(syscall.SIGTERM, 5*time.Second); err != nil {
			return fmt.Errorf("sandbox %s: stop virtiofsd: %w", s.cfg.ID, err)
		}
	}
	return nil
}

// Cleanup kills what still runs and removes the sockets and logs.
func (s *sandbox) Cleanup() error {
	return hostvmm.Leftovers{
		Procs:          append([]*hostvmm.Process{s.proc}, s.helpers...),
		Files:          s.made,
		StateDir:       s.cfg.StateDir,
		RemoveStateDir: s.createdDir,
	}.Cleanup(s.cfg.ID, s.closeAPI)
}

// client speaks HTTP/1.1 to the API socket.
type client struct {
	http *http.Client
	tr   *http.Transport
}

func newClient(socket string) *client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &client{http: &http.Client{Transport: tr}, tr: tr}
}

func (c *client) close() { c.tr.CloseIdleConnections() }

// APIError is a non-2xx answer of the API.
type APIError struct {
	Method, Endpoint string
	Status           int
	Body             string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("cloud-hypervisor %s %s: http %d: %s", e.Method, e.Endpoint, e.Status, e.Body)
}

// errAPIUnreachable marks a request that got no HTTP answer.
var errAPIUnreachable = errors.New("no answer")

// maxBody bounds what is read of an API answer.
const maxBody = 1 << 20

func (c *client) do(ctx context.Context, method, endpoint string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s: %w", endpoint, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost/api/v1/"+endpoint, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cloud-hypervisor %s %s: %w: %w", method, endpoint, errAPIUnreachable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("cloud-hypervisor %s %s: read answer: %w", method, endpoint, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &APIError{Method: method, Endpoint: endpoint, Status: resp.StatusCode, Body: strings.TrimSpace(string(b))}
		switch resp.StatusCode {
		case http.StatusNotFound:
			return fmt.Errorf("%w: %w", e, errdefs.ErrNotFound)
		case http.StatusBadRequest:
			return fmt.Errorf("%w: %w", e, errdefs.ErrInvalidArgument)
		}
		return fmt.Errorf("%w: %w", e, errdefs.ErrUnknown)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("cloud-hypervisor %s %s: decode answer: %w", method, endpoint, err)
		}
	}
	return nil
}

func (s *sandbox) closeAPI() {
	if s.api != nil {
		s.api.close()
	}
}
