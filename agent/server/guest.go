package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cocoon-containers/cocoon/agent/container"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// storageHandlers are the storage drivers agent/storage implements.
var storageHandlers = []string{"local", "ephemeral", "bind", "virtio-fs", "9p", "blk", "overlayfs"}

func (s *Server) GetGuestDetails(ctx context.Context, req *agentpb.GuestDetailsRequest) (*agentpb.GuestDetailsResponse, error) {
	resp := &agentpb.GuestDetailsResponse{
		AgentDetails: &agentpb.AgentDetails{
			Version:         s.opts.Version,
			InitDaemon:      s.opts.PID1,
			SupportsSeccomp: container.SeccompSupported(),
		},
	}
	if s.opts.Storage != nil {
		resp.AgentDetails.StorageHandlers = storageHandlers
	}
	if req.MemBlockSize {
		b, err := os.ReadFile(filepath.Join(s.opts.SysfsRoot, "devices/system/memory/block_size_bytes"))
		switch {
		case err == nil:
			v, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64)
			if perr != nil {
				return nil, fmt.Errorf("guest details: parse memory block size: %w", perr)
			}
			resp.MemBlockSizeBytes = v
		case errors.Is(err, fs.ErrNotExist):
			// No memory hotplug support in this guest.
		default:
			return nil, fmt.Errorf("guest details: %w", err)
		}
	}
	if req.MemHotplugProbe {
		_, err := os.Stat(filepath.Join(s.opts.SysfsRoot, "devices/system/memory/probe"))
		resp.SupportMemHotplugProbe = err == nil
	}
	return resp, nil
}

func (s *Server) SetGuestDateTime(ctx context.Context, req *agentpb.SetGuestDateTimeRequest) (*emptypb.Empty, error) {
	if !s.opts.PID1 {
		return nil, fmt.Errorf("set guest time: only the guest's init may set the clock: %w", errdefs.ErrFailedPrecondition)
	}
	if req.Sec < 0 || req.Usec < 0 || req.Usec >= 1_000_000 {
		return nil, fmt.Errorf("set guest time: invalid time %d.%06d: %w", req.Sec, req.Usec, errdefs.ErrInvalidArgument)
	}
	tv := unix.Timeval{Sec: req.Sec, Usec: req.Usec}
	if err := unix.Settimeofday(&tv); err != nil {
		return nil, fmt.Errorf("set guest time: %w", err)
	}
	return empty, nil
}

func (s *Server) ReseedRandomDev(ctx context.Context, req *agentpb.ReseedRandomDevRequest) (*emptypb.Empty, error) {
	if len(req.Data) == 0 || len(req.Data) > maxRandBytes {
		return nil, fmt.Errorf("reseed random: %d bytes, want 1 to %d: %w", len(req.Data), maxRandBytes, errdefs.ErrInvalidArgument)
	}
	f, err := os.OpenFile(s.opts.RandomDevice, os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("reseed random: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(req.Data); err != nil {
		return nil, fmt.Errorf("reseed random: %w", err)
	}
	return empty, nil
}

var cpuDir = regexp.MustCompile(`^cpu([0-9]+)$`)
var memDir = regexp.MustCompile(`^memory([0-9]+)$`)

func (s *Server) OnlineCPUMem(ctx context.Context, req *agentpb.OnlineCPUMemRequest) (*emptypb.Empty, error) {
	if !s.opts.PID1 {
		return nil, fmt.Errorf("online cpus: only the guest's init may change cpus: %w", errdefs.ErrFailedPrecondition)
	}
	cpus := filepath.Join(s.opts.SysfsRoot, "devices/system/cpu")
	if _, err := onlineAll(cpus, cpuDir, "1", "0", int(req.NbCpus)); err != nil {
		return nil, fmt.Errorf("online cpus: %w", err)
	}
	if !req.CpuOnly {
		mem := filepath.Join(s.opts.SysfsRoot, "devices/system/memory")
		if _, err := onlineAll(mem, memDir, "online", "offline", 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("online memory: %w", err)
		}
	}
	return empty, nil
}

// onlineAll writes on to the online/state file of up to limit (0 = all)
// offline entries of dir, in numeric order, and returns how many changed.
func onlineAll(dir string, pattern *regexp.Regexp, on, off string, limit int) (int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	type item struct {
		n    int
		name string
	}
	var items []item
	for _, e := range ents {
		m := pattern.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[1])
		items = append(items, item{n, e.Name()})
	}
	sort.Slice(items, func(i, j int) bool { return items[i].n < items[j].n })
	file := "online"
	if on == "online" {
		file = "state"
	}
	changed := 0
	for _, it := range items {
		if limit > 0 && changed >= limit {
			break
		}
		p := filepath.Join(dir, it.name, file)
		b, err := os.ReadFile(p)
		if err != nil {
			// cpu0 usually has no online file: it cannot go offline.
			continue
		}
		if strings.TrimSpace(string(b)) != off {
			continue
		}
		if err := os.WriteFile(p, []byte(on), 0o644); err != nil {
			return changed, fmt.Errorf("online %s: %w", it.name, err)
		}
		changed++
	}
	return changed, nil
}

func (s *Server) GetMetrics(ctx context.Context, req *agentpb.GetMetricsRequest) (*agentpb.Metrics, error) {
	var b strings.Builder
	metric := func(name, typ, help string, v float64) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n%s %s\n", name, help, name, typ, name, strconv.FormatFloat(v, 'g', -1, 64))
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	metric("cocoon_agent_goroutines", "gauge", "Goroutines in the agent.", float64(runtime.NumGoroutine()))
	metric("cocoon_agent_go_heap_alloc_bytes", "gauge", "Go heap bytes allocated by the agent.", float64(ms.HeapAlloc))
	if rss, err := statusValue(filepath.Join(s.opts.ProcRoot, "self/status"), "VmRSS"); err == nil {
		metric("cocoon_agent_resident_memory_bytes", "gauge", "Resident memory of the agent.", float64(rss*1024))
	}
	if ents, err := os.ReadDir(filepath.Join(s.opts.ProcRoot, "self/fd")); err == nil {
		metric("cocoon_agent_open_fds", "gauge", "Open file descriptors of the agent.", float64(len(ents)))
	}
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err == nil {
		cpu := float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
		metric("cocoon_agent_cpu_seconds_total", "counter", "CPU time used by the agent.", cpu)
	}
	s.mu.Lock()
	n := len(s.containers)
	s.mu.Unlock()
	metric("cocoon_agent_containers", "gauge", "Containers managed by the agent.", float64(n))

	if err := guestMemInfo(&b, filepath.Join(s.opts.ProcRoot, "meminfo")); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if la, err := os.ReadFile(filepath.Join(s.opts.ProcRoot, "loadavg")); err == nil {
		f := strings.Fields(string(la))
		for i, name := range []string{"cocoon_guest_load1", "cocoon_guest_load5", "cocoon_guest_load15"} {
			if i < len(f) {
				if v, err := strconv.ParseFloat(f[i], 64); err == nil {
					metric(name, "gauge", "Guest load average.", v)
				}
			}
		}
	}
	return &agentpb.Metrics{Metrics: b.String()}, nil
}

var metricName = regexp.MustCompile(`[^a-zA-Z0-9_]`)

func guestMemInfo(b *strings.Builder, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b.WriteString("# HELP cocoon_guest_meminfo_bytes Guest /proc/meminfo in bytes.\n# TYPE cocoon_guest_meminfo_bytes gauge\n")
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			continue
		}
		if len(fields) > 1 && fields[1] == "kB" {
			v *= 1024
		}
		fmt.Fprintf(b, "cocoon_guest_meminfo_bytes{field=%q} %d\n", metricName.ReplaceAllString(key, "_"), v)
	}
	return sc.Err()
}

func statusValue(path, key string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), key+":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			break
		}
		return strconv.ParseUint(fields[0], 10, 64)
	}
	return 0, fmt.Errorf("%s: no %s: %w", path, key, errdefs.ErrNotFound)
}
