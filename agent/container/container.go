// Package container runs OCI containers and their processes with runc's
// libcontainer. It is, with its reexec subpackage, the only part of the
// agent that imports libcontainer. libcontainer re-executes /proc/self/exe
// with the argument "init" to set up every container process, so a binary
// (or test binary) that uses this package must also import
// agent/container/reexec for its side effect.
package container

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/cgroups"
	// Registers the device-rule manager that cgroup managers need.
	_ "github.com/opencontainers/cgroups/devices"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/seccomp"

	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// maxIDLen bounds container and exec ids.
const maxIDLen = 128

// ValidateID checks a container or exec id from the host: 1 to 128 of
// [a-zA-Z0-9_.-], starting with a letter or digit. (A hand-written check:
// the equivalent regexp costs every container start a millisecond of
// package initialization.)
func ValidateID(kind, id string) error {
	ok := len(id) > 0 && len(id) <= maxIDLen && isAlnum(id[0])
	for i := 1; ok && i < len(id); i++ {
		c := id[i]
		ok = isAlnum(c) || c == '_' || c == '.' || c == '-'
	}
	if !ok {
		return fmt.Errorf("invalid %s id %q: %w", kind, id, errdefs.ErrInvalidArgument)
	}
	return nil
}

func isAlnum(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// Config describes a container to create.
type Config struct {
	// ID is the container id; it is also the init process's exec id.
	ID string
	// StateRoot holds libcontainer's state, one directory per container.
	StateRoot string
	// CgroupParent is the cgroup under which containers are placed; the
	// host's cgroupsPath is ignored.
	CgroupParent string
	// Spec is the runtime spec, already converted and validated.
	Spec *specs.Spec
	// NoPivotRoot uses MS_MOVE + chroot instead of pivot_root.
	NoPivotRoot bool
	// OnOOM is called (from a goroutine, must not block) for each OOM kill.
	OnOOM func(containerID string)
	// Logger receives the container's log lines.
	Logger *slog.Logger
}

// Container is one container and its processes.
type Container struct {
	id    string
	lc    *libcontainer.Container
	log   *slog.Logger
	onOOM func(string)

	mu      sync.Mutex
	procs   map[string]*Process
	init    *Process
	started bool
}

// Create creates the container and starts its init process up to the point
// where it waits for Start.
func Create(ctx context.Context, cfg Config) (_ *Container, retErr error) {
	if err := ValidateID("container", cfg.ID); err != nil {
		return nil, err
	}
	if cfg.Spec == nil || cfg.Spec.Process == nil || cfg.Spec.Root == nil {
		return nil, fmt.Errorf("create container %s: incomplete spec: %w", cfg.ID, errdefs.ErrInvalidArgument)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("container_id", cfg.ID)
	st, err := os.Stat(cfg.Spec.Root.Path)
	if err != nil || !st.IsDir() {
		return nil, fmt.Errorf("create container %s: rootfs %q is not a directory: %w", cfg.ID, cfg.Spec.Root.Path, errdefs.ErrInvalidArgument)
	}
	spec := *cfg.Spec
	linux := specs.Linux{}
	if spec.Linux != nil {
		linux = *spec.Linux
	}
	parent := cfg.CgroupParent
	if parent == "" {
		parent = "/cocoon"
	}
	linux.CgroupsPath = path.Join("/", parent, cfg.ID)
	spec.Linux = &linux
	proc := *spec.Process
	spec.Process = &proc
	if err := resolveUser(spec.Root.Path, &spec.Process.User); err != nil {
		return nil, fmt.Errorf("create container %s: %w", cfg.ID, err)
	}
	clampOOMScoreAdj(log, spec.Process)

	lcfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName:  cfg.ID,
		Spec:        &spec,
		NoPivotRoot: cfg.NoPivotRoot,
	})
	if err != nil {
		return nil, fmt.Errorf("create container %s: convert spec: %w: %w", cfg.ID, err, errdefs.ErrInvalidArgument)
	}
	lc, err := libcontainer.Create(cfg.StateRoot, cfg.ID, lcfg)
	if err != nil {
		if errors.Is(err, libcontainer.ErrExist) {
			return nil, fmt.Errorf("create container %s: %w", cfg.ID, errdefs.ErrAlreadyExists)
		}
		return nil, fmt.Errorf("create container %s: %w", cfg.ID, err)
	}
	defer func() {
		if retErr != nil {
			if err := lc.Destroy(); err != nil {
				log.Warn("destroy half-created container", "error", err)
			}
		}
	}()
	c := &Container{
		id:    cfg.ID,
		lc:    lc,
		log:   log,
		onOOM: cfg.OnOOM,
		procs: map[string]*Process{},
	}
	p, err := c.spawn(cfg.ID, spec.Process, true)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", cfg.ID, err)
	}
	c.init = p
	c.procs[cfg.ID] = p
	c.watchOOM()
	return c, nil
}

// ID returns the container id.
func (c *Container) ID() string { return c.id }

// Start lets the init process exec the container's program.
func (c *Container) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		return fmt.Errorf("start container %s: already started: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	if err := c.lc.Exec(); err != nil {
		return fmt.Errorf("start container %s: %w", c.id, err)
	}
	c.started = true
	return nil
}

// Status is the container's state as libcontainer sees it.
func (c *Container) Status() string {
	st, err := c.lc.Status()
	if err != nil {
		return "unknown"
	}
	return st.String()
}

// Exec starts an additional process in the running container.
func (c *Container) Exec(ctx context.Context, execID string, sp *specs.Process) (*Process, error) {
	if err := ValidateID("exec", execID); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.procs[execID]; ok {
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, c.id, errdefs.ErrAlreadyExists)
	}
	if !c.started || c.init.Exited() {
		return nil, fmt.Errorf("exec %s in container %s: container is not running: %w", execID, c.id, errdefs.ErrFailedPrecondition)
	}
	// A process joining a frozen cgroup would block its start forever.
	if st, err := c.lc.Status(); err != nil || st != libcontainer.Running {
		return nil, fmt.Errorf("exec %s in container %s: container is %s: %w", execID, c.id, c.Status(), errdefs.ErrFailedPrecondition)
	}
	if sp.User.Username != "" {
		proc := *sp
		if err := resolveUser(c.lc.Config().Rootfs, &proc.User); err != nil {
			return nil, fmt.Errorf("exec %s in container %s: %w", execID, c.id, err)
		}
		sp = &proc
	}
	p, err := c.spawn(execID, sp, false)
	if err != nil {
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, c.id, err)
	}
	c.procs[execID] = p
	return p, nil
}

// Process returns a process by exec id; "" names the init process.
func (c *Container) Process(execID string) (*Process, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if execID == "" {
		return c.init, nil
	}
	p, ok := c.procs[execID]
	if !ok {
		return nil, fmt.Errorf("process %s in container %s: %w", execID, c.id, errdefs.ErrNotFound)
	}
	return p, nil
}

// Init returns the container's init process.
func (c *Container) Init() *Process { return c.init }

// Release frees an exec process once it exited, its status was collected
// (MarkWaited) and its output was read; the init process stays until the
// container is destroyed. It reports whether the process is gone.
func (c *Container) Release(p *Process) bool {
	if p == c.init || !p.Exited() || !p.waited.Load() || !p.drained() {
		return false
	}
	c.mu.Lock()
	if c.procs[p.execID] == p {
		delete(c.procs, p.execID)
	}
	c.mu.Unlock()
	p.closeAll()
	return true
}

// Signal sends sig to one process, or with execID "" to every process of
// the container.
func (c *Container) Signal(ctx context.Context, execID string, sig syscall.Signal) error {
	if execID != "" {
		p, err := c.Process(execID)
		if err != nil {
			return err
		}
		if p == c.init {
			return c.signalInit(sig)
		}
		return p.signal(sig)
	}
	if c.init.Exited() {
		return fmt.Errorf("signal container %s: not running: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	if err := c.signalInit(sig); err != nil && !errors.Is(err, errdefs.ErrFailedPrecondition) {
		return err
	}
	pids, err := c.lc.Processes()
	if err != nil {
		return fmt.Errorf("signal container %s: list processes: %w", c.id, err)
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("signal container %s pid %d: %w", c.id, pid, err)
		}
	}
	return nil
}

func (c *Container) signalInit(sig syscall.Signal) error {
	if c.init.Exited() {
		return fmt.Errorf("signal container %s: init exited: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	if err := c.lc.Signal(sig); err != nil {
		if errors.Is(err, libcontainer.ErrNotRunning) {
			return fmt.Errorf("signal container %s: %w", c.id, errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("signal container %s: %w", c.id, err)
	}
	return nil
}

// Pause freezes the container.
func (c *Container) Pause(ctx context.Context) error {
	if err := c.lc.Pause(); err != nil {
		if errors.Is(err, libcontainer.ErrNotRunning) {
			return fmt.Errorf("pause container %s: %w", c.id, errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("pause container %s: %w", c.id, err)
	}
	return nil
}

// Resume thaws the container.
func (c *Container) Resume(ctx context.Context) error {
	if err := c.lc.Resume(); err != nil {
		if errors.Is(err, libcontainer.ErrNotPaused) {
			return fmt.Errorf("resume container %s: %w", c.id, errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("resume container %s: %w", c.id, err)
	}
	return nil
}

// Stats returns the container's cgroup statistics.
func (c *Container) Stats(ctx context.Context) (*cgroups.Stats, error) {
	st, err := c.lc.Stats()
	if err != nil {
		return nil, fmt.Errorf("stats of container %s: %w", c.id, err)
	}
	if st.CgroupStats == nil {
		return &cgroups.Stats{}, nil
	}
	return st.CgroupStats, nil
}

// Update changes the container's cgroup resources.
func (c *Container) Update(ctx context.Context, r *specs.LinuxResources) error {
	if r == nil {
		return fmt.Errorf("update container %s: no resources: %w", c.id, errdefs.ErrInvalidArgument)
	}
	cfg := c.lc.Config()
	res := *cfg.Cgroups.Resources
	if m := r.Memory; m != nil {
		if m.Limit != nil {
			res.Memory = *m.Limit
		}
		if m.Reservation != nil {
			res.MemoryReservation = *m.Reservation
		}
		if m.Swap != nil {
			res.MemorySwap = *m.Swap
		}
		if m.Swappiness != nil {
			res.MemorySwappiness = m.Swappiness
		}
	}
	if cp := r.CPU; cp != nil {
		if cp.Shares != nil {
			res.CpuShares = *cp.Shares
		}
		if cp.Quota != nil {
			res.CpuQuota = *cp.Quota
		}
		if cp.Period != nil {
			res.CpuPeriod = *cp.Period
		}
		if cp.RealtimeRuntime != nil {
			res.CpuRtRuntime = *cp.RealtimeRuntime
		}
		if cp.RealtimePeriod != nil {
			res.CpuRtPeriod = *cp.RealtimePeriod
		}
		if cp.Cpus != "" {
			res.CpusetCpus = cp.Cpus
		}
		if cp.Mems != "" {
			res.CpusetMems = cp.Mems
		}
	}
	if r.Pids != nil && r.Pids.Limit != nil {
		l := *r.Pids.Limit
		res.PidsLimit = &l
	}
	if b := r.BlockIO; b != nil && b.Weight != nil {
		res.BlkioWeight = *b.Weight
	}
	cg := *cfg.Cgroups
	cg.Resources = &res
	cfg.Cgroups = &cg
	if err := c.lc.Set(cfg); err != nil {
		return fmt.Errorf("update container %s: %w", c.id, err)
	}
	return nil
}

// Destroy kills every process, waits for them (up to ctx), removes the
// container's cgroup and state, and releases its streams.
func (c *Container) Destroy(ctx context.Context) error {
	if !c.init.Exited() {
		if err := c.lc.Signal(unix.SIGKILL); err != nil && !errors.Is(err, libcontainer.ErrNotRunning) {
			c.log.Debug("kill init", "error", err)
		}
		if pids, err := c.lc.Processes(); err == nil {
			for _, pid := range pids {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
	}
	c.mu.Lock()
	procs := make([]*Process, 0, len(c.procs))
	for _, p := range c.procs {
		procs = append(procs, p)
	}
	c.mu.Unlock()
	for _, p := range procs {
		select {
		case <-p.exited:
		case <-ctx.Done():
			return fmt.Errorf("destroy container %s: waiting for process %s: %w", c.id, p.execID, ctx.Err())
		}
	}
	if err := c.lc.Destroy(); err != nil {
		return fmt.Errorf("destroy container %s: %w", c.id, err)
	}
	for _, p := range procs {
		p.closeAll()
	}
	// The OOM watcher ends by itself once the kernel reports the cgroup's
	// removal, which can take a few milliseconds; nobody waits for it.
	return nil
}

func (c *Container) watchOOM() {
	ch, err := c.lc.NotifyOOM()
	if err != nil {
		c.log.Warn("no oom notifications", "error", err)
		return
	}
	go func() {
		for range ch {
			c.log.Info("container oom")
			if c.onOOM != nil {
				c.onOOM(c.id)
			}
		}
	}()
}

// clampOOMScoreAdj lowers a request for a more negative oom_score_adj than
// the agent's own to the agent's value when the kernel would refuse it
// (no CAP_SYS_RESOURCE), instead of failing the container.
func clampOOMScoreAdj(log *slog.Logger, p *specs.Process) {
	if p.OOMScoreAdj == nil {
		return
	}
	cur, err := readOOMScoreAdj()
	if err != nil {
		return
	}
	if v, clamped := clampOOM(*p.OOMScoreAdj, cur, hasCapSysResource()); clamped {
		log.Warn("oom_score_adj below the agent's own without CAP_SYS_RESOURCE: clamped",
			"requested", *p.OOMScoreAdj, "used", v)
		p.OOMScoreAdj = &v
	}
}

// clampOOM returns the oom_score_adj to use: the kernel refuses to lower
// it below the current value without CAP_SYS_RESOURCE.
func clampOOM(requested, current int, privileged bool) (int, bool) {
	if requested >= current || privileged {
		return requested, false
	}
	return current, true
}

func readOOMScoreAdj() (int, error) {
	b, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func hasCapSysResource() bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "CapEff:")
		if !ok {
			continue
		}
		mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		return err == nil && mask&(1<<unix.CAP_SYS_RESOURCE) != 0
	}
	return false
}

// configsCapabilities converts process capabilities for an exec.
func configsCapabilities(c *specs.LinuxCapabilities) *configs.Capabilities {
	if c == nil {
		return nil
	}
	return &configs.Capabilities{
		Bounding:    c.Bounding,
		Effective:   c.Effective,
		Inheritable: c.Inheritable,
		Permitted:   c.Permitted,
		Ambient:     c.Ambient,
	}
}

// SeccompSupported reports whether this build can apply seccomp filters.
func SeccompSupported() bool { return seccomp.Enabled }
