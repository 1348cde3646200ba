// Package process runs the agent as a host process instead of in a VM.
//
// WARNING: THIS OFFERS NO ISOLATION AND NO CONFIDENTIALITY. The agent runs
// as root on the host, in new mount, PID, UTS and IPC namespaces with a
// private /run, which keeps it from tripping over the host's files but
// is no security boundary: its containers share the host kernel and
// everything the host can see. Use it for development and fast tests only,
// never for workloads that need protection. A confidential=snp launch is
// refused.
//
// Inside the namespaces a shell is PID 1 (it reaps orphans and forwards
// SIGTERM); the agent is its child, so it does not take itself for a VM's
// init. The agent finds:
//
//	/run                       a private tmpfs
//	/run/cocoon-host           the sandbox state directory (bind mount)
//	/run/cocoon-shared/<tag>   each shared directory (bind mount, read-only when asked)
//
// and listens on unix:///run/cocoon-host/agent.sock
// (COCOON_AGENT_SERVER_ADDR), which the host dials as
// unix://<state dir>/agent.sock. In simulated confidential mode the
// attestation parameters arrive as COCOON_ATTESTATION,
// COCOON_SIM_HOST_DATA and COCOON_SIM_MEASUREMENT (the kernel command-line
// keys in upper case), since the host's /proc/cmdline is not the guest's;
// the other cocoon.<key>=<value> parameters of the configured command line
// travel the same way, as COCOON_<KEY>. The agent's default policy is the
// launcher's DefaultPolicy (allow-all unless set), written to the state
// directory, as a development image would carry it.
package process

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/cocoon-containers/cocoon/hostvmm"
	"github.com/cocoon-containers/cocoon/rootfs"
	"github.com/cocoon-containers/cocoon/rpc/transport"
)

// Paths inside the agent's mount namespace.
const (
	HostStateDir = "/run/cocoon-host"
	SharedRoot   = "/run/cocoon-shared"
)

// Launcher starts agent processes. The zero value is usable.
type Launcher struct {
	// Unshare is util-linux unshare(1) (default: unshare on PATH).
	Unshare string
	// StopTimeout is how long Stop waits after SIGTERM before SIGKILL
	// (default 10s).
	StopTimeout time.Duration
	// Env is extra environment for the agent ("KEY=value").
	Env []string
	// Logger receives launcher events (default slog.Default()).
	Logger *slog.Logger
	// DefaultPolicy is the agent's policy until SetPolicy (default: the
	// allow-all policy of development images).
	DefaultPolicy []byte
}

// setupScript runs as PID 1 of the new namespaces before the agent: it
// keeps a handle on the state directory, covers /run with a tmpfs and
// mounts the state directory and the shared directories into it. The
// arguments are: state dir, agent, then tag, host path, ro|rw triples.
const setupScript = `set -eu
state=$1 agent=$2
shift 2
exec 3<"$state"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p ` + HostStateDir + `
mount --bind /proc/self/fd/3 ` + HostStateDir + `
i=4
while [ $# -ge 3 ]; do
	eval "exec $i<\"\$2\""
	mkdir -p ` + SharedRoot + `/"$1"
	mount --rbind /proc/self/fd/$i ` + SharedRoot + `/"$1"
	if [ "$3" = ro ]; then mount -o remount,bind,ro ` + SharedRoot + `/"$1"; fi
	eval "exec $i<&-"
	i=$((i+1))
	shift 3
done
exec 3<&-
# PID 1 of the namespace is this shell, not the agent: the agent would take
# PID 1 for a VM's init and set up the machine. The shell reaps orphans
# while it waits and forwards SIGTERM and SIGINT.
# A wait cut short by a trap returns 128+signal, not the agent's status, so
# the loop only ends once the agent is gone, and then asks the shell's job
# table once more for the status it recorded.
"$agent" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
trap 'kill -INT "$child" 2>/dev/null' INT
while :; do
	rc=0
	wait "$child" || rc=$?
	if ! kill -0 "$child" 2>/dev/null; then
		last=0
		wait "$child" 2>/dev/null || last=$?
		[ "$last" -eq 127 ] || rc=$last
		exit "$rc"
	fi
done
`

// Start runs the agent and returns at once; DialAgent waits for its socket.
func (l *Launcher) Start(ctx context.Context, cfg hostvmm.Config) (hostvmm.Sandbox, error) {
	if err := hostvmm.Validate(&cfg, hostvmm.Requirements{AgentBinary: true}); err != nil {
		return nil, err
	}
	if cfg.Confidential == hostvmm.ConfidentialSNP {
		return nil, fmt.Errorf("sandbox %s: the process launcher cannot run an SNP guest (no VM, no isolation): %w", cfg.ID, errdefs.ErrFailedPrecondition)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("sandbox %s: the process launcher needs root for its namespaces: %w", cfg.ID, errdefs.ErrFailedPrecondition)
	}
	unshare := l.Unshare
	if unshare == "" {
		unshare = "unshare"
	}
	unsharePath, err := exec.LookPath(unshare)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: find unshare: %w", cfg.ID, errdefs.ErrNotFound.WithMessage(err.Error()))
	}
	log := l.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("sandbox_id", cfg.ID, "launcher", "process")

	s := &sandbox{cfg: cfg, socket: filepath.Join(cfg.StateDir, "agent.sock"), log: log}
	s.stopTimeout = l.StopTimeout
	if s.stopTimeout <= 0 {
		s.stopTimeout = 10 * time.Second
	}
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
	if _, err := os.Lstat(s.socket); err == nil {
		return nil, fmt.Errorf("sandbox %s: %s exists: another sandbox uses this state dir: %w", cfg.ID, s.socket, errdefs.ErrAlreadyExists)
	}
	s.made = append(s.made, s.socket)
	policy := l.DefaultPolicy
	if policy == nil {
		policy = rootfs.AllowAllPolicy()
	}
	policyFile := filepath.Join(cfg.StateDir, "default-policy.rego")
	s.made = append(s.made, policyFile)
	if err := os.WriteFile(policyFile, policy, 0o644); err != nil {
		return nil, fmt.Errorf("sandbox %s: default policy: %w", cfg.ID, err)
	}
	if cfg.ConsoleLog == filepath.Join(cfg.StateDir, "console.log") {
		s.made = append(s.made, cfg.ConsoleLog)
	}
	console, err := os.OpenFile(cfg.ConsoleLog, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: console log: %w", cfg.ID, err)
	}
	defer console.Close()

	args := []string{"--mount", "--pid", "--uts", "--ipc", "--fork", "--kill-child", "--mount-proc",
		"--propagation", "slave", "--", "/bin/sh", "-c", setupScript, "cocoon-setup", cfg.StateDir, cfg.AgentBinary}
	for _, d := range cfg.SharedDirs {
		mode := "rw"
		if d.ReadOnly {
			mode = "ro"
		}
		args = append(args, d.Tag, d.HostPath, mode)
	}
	// Each shared directory becomes a mount of its own with shared
	// propagation, and the namespace is a slave of the host: what the host
	// mounts into a shared directory later (the rootfs of a pod's next
	// container) appears in the agent's view, while nothing the agent
	// mounts leaks out.
	for _, d := range cfg.SharedDirs {
		if err := unix.Mount(d.HostPath, d.HostPath, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return nil, fmt.Errorf("sandbox %s: share %s: %w", cfg.ID, d.HostPath, err)
		}
		s.sharedMounts = append(s.sharedMounts, d.HostPath)
		if err := unix.Mount("", d.HostPath, "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
			return nil, fmt.Errorf("sandbox %s: share %s: %w", cfg.ID, d.HostPath, err)
		}
	}
	cmd := exec.Command(unsharePath, args...)
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = console, console
	cmd.Env = append([]string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"COCOON_AGENT_SERVER_ADDR=unix://" + HostStateDir + "/agent.sock",
		"COCOON_SANDBOX_ID=" + cfg.ID,
		"COCOON_DEFAULT_POLICY=" + HostStateDir + "/default-policy.rego",
	}, cmdlineEnv(cfg.Cmdline)...)
	cmd.Env = append(cmd.Env, l.Env...)
	if cfg.Confidential == hostvmm.ConfidentialSimulated {
		cmd.Env = append(cmd.Env,
			"COCOON_ATTESTATION=simulated",
			"COCOON_SIM_HOST_DATA="+hex.EncodeToString(cfg.HostData[:]),
			"COCOON_SIM_MEASUREMENT="+hex.EncodeToString(cfg.SimMeasurement[:]))
	}
	p, err := hostvmm.StartProcess(cmd)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", cfg.ID, err)
	}
	s.proc = p
	log.Debug("agent process started", "pid", p.Pid())
	ok = true
	return s, nil
}

type sandbox struct {
	cfg         hostvmm.Config
	socket      string
	log         *slog.Logger
	proc        *hostvmm.Process
	stopTimeout time.Duration
	createdDir  bool
	made        []string
	// sharedMounts are the host binds that give shared directories
	// shared propagation; Cleanup removes them.
	sharedMounts []string
	stopMu       sync.Mutex
}

func (s *sandbox) AgentAddr() string  { return "unix://" + s.socket }
func (s *sandbox) ConsoleLog() string { return s.cfg.ConsoleLog }

// DialAgent retries until the agent's socket accepts or ctx is done.
func (s *sandbox) DialAgent(ctx context.Context) (net.Conn, error) {
	for {
		if s.proc.Exited() {
			return nil, fmt.Errorf("sandbox %s: dial agent: agent has exited (%s): %w", s.cfg.ID, s.proc.Exit().Reason, errdefs.ErrUnavailable)
		}
		c, err := transport.Dial(ctx, s.AgentAddr())
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("sandbox %s: dial agent: %w", s.cfg.ID, errors.Join(err, errdefs.ErrUnavailable))
		case <-s.proc.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *sandbox) Wait(ctx context.Context) (hostvmm.ExitInfo, error) {
	e, err := s.proc.Wait(ctx)
	if err != nil {
		return e, fmt.Errorf("sandbox %s: %w", s.cfg.ID, err)
	}
	return e, nil
}

// firstChild is the first child of pid, or 0.
func firstChild(pid int) int {
	p := strconv.Itoa(pid)
	b, err := os.ReadFile("/proc/" + p + "/task/" + p + "/children")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	c, _ := strconv.Atoi(f[0])
	return c
}

// initPid is the host pid of the namespace's PID 1 (the shell unshare
// forked), or 0.
func (s *sandbox) initPid() int { return firstChild(s.proc.Pid()) }

// AgentPid is the agent's host pid, or 0 while it is not running.
func (s *sandbox) AgentPid() int {
	if p := s.initPid(); p > 0 {
		return firstChild(p)
	}
	return 0
}

// Stop sends SIGTERM to the namespace's init, which passes it to the
// agent, waits, then kills the namespace's processes.
func (s *sandbox) Stop(ctx context.Context) error {
	s.stopMu.Lock()
	defer s.stopMu.Unlock()
	if s.proc.Exited() {
		return nil
	}
	if pid := s.initPid(); pid > 0 {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	t := time.NewTimer(s.stopTimeout)
	defer t.Stop()
	select {
	case <-s.proc.Done():
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	// unshare --kill-child takes the agent, and with it the PID namespace,
	// down when unshare dies.
	if err := s.proc.Kill(10 * time.Second); err != nil {
		return fmt.Errorf("sandbox %s: stop: %w", s.cfg.ID, err)
	}
	return nil
}

func (s *sandbox) Cleanup() error {
	var errs []error
	for i := len(s.sharedMounts) - 1; i >= 0; i-- {
		if err := unix.Unmount(s.sharedMounts[i], unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("sandbox %s: unshare %s: %w", s.cfg.ID, s.sharedMounts[i], err))
		}
	}
	s.sharedMounts = nil
	err := hostvmm.Leftovers{
		Procs:          []*hostvmm.Process{s.proc},
		Files:          s.made,
		StateDir:       s.cfg.StateDir,
		RemoveStateDir: s.createdDir,
	}.Cleanup(s.cfg.ID, nil)
	return errors.Join(append(errs, err)...)
}

// cmdlineEnv turns the cocoon.<key>=<value> parameters of a kernel command
// line into COCOON_<KEY>=<value>, except the ones the launcher sets itself.
func cmdlineEnv(cmdline string) []string {
	var env []string
	for _, f := range strings.Fields(cmdline) {
		k, v, ok := strings.Cut(f, "=")
		key, isCocoon := strings.CutPrefix(k, "cocoon.")
		if !ok || !isCocoon || key == "" || strings.HasPrefix(key, "sim_") || key == "server_addr" || key == "default_policy" {
			continue
		}
		env = append(env, "COCOON_"+strings.ToUpper(key)+"="+v)
	}
	return env
}
