package initsys

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultReapGrace is how long a zombie child must stay unclaimed before
// the reaper collects it.
const DefaultReapGrace = time.Second

// Reaper collects orphans that were reparented to the agent (PID 1, or a
// child subreaper on a host).
//
// The agent's own children (container and exec processes) are waited for
// by goroutines that block in wait from the moment the process starts;
// reaping them here would steal their exit status. So the reaper never
// waits for "any child": it lists the agent's zombie children and collects
// only those that stayed zombies for the grace period, which a child with
// a waiter never does.
type Reaper struct {
	grace time.Duration
	log   *slog.Logger
	self  int
	proc  string

	mu     sync.Mutex
	seen   map[zombie]time.Time
	reaped int

	stop context.CancelFunc
	done chan struct{}
}

type zombie struct {
	pid   int
	start string // start time in clock ticks, against pid reuse
}

// ReaperOptions configure StartReaper.
type ReaperOptions struct {
	// Grace is DefaultReapGrace when zero.
	Grace time.Duration
	// Subreaper makes the calling process a child subreaper first (on a
	// host; PID 1 already is the reaper of its namespace).
	Subreaper bool
	Logger    *slog.Logger
}

// StartReaper starts reaping until Stop.
func StartReaper(ctx context.Context, opts ReaperOptions) (*Reaper, error) {
	if opts.Subreaper {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return nil, err
		}
	}
	r := &Reaper{grace: opts.Grace, log: opts.Logger, self: os.Getpid(), proc: "/proc",
		seen: map[zombie]time.Time{}, done: make(chan struct{})}
	if r.grace <= 0 {
		r.grace = DefaultReapGrace
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	ctx, r.stop = context.WithCancel(ctx)
	go func() {
		defer close(r.done)
		// A zombie is collected on the first scan after its grace ran
		// out, so scanning on a timer is enough; scanning at every
		// SIGCHLD would cost the container lifecycle CPU for nothing.
		t := time.NewTicker(r.grace / 2)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			r.scan(ctx, time.Now())
		}
	}()
	return r, nil
}

// Stop ends the reaper.
func (r *Reaper) Stop() {
	r.stop()
	<-r.done
}

// Reaped returns how many orphans were collected.
func (r *Reaper) Reaped() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reaped
}

func (r *Reaper) scan(ctx context.Context, now time.Time) {
	zs := r.zombies()
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := map[zombie]time.Time{}
	for _, z := range zs {
		first, ok := r.seen[z]
		if !ok {
			cur[z] = now
			continue
		}
		if now.Sub(first) < r.grace {
			cur[z] = first
			continue
		}
		var ws unix.WaitStatus
		pid, err := unix.Wait4(z.pid, &ws, unix.WNOHANG, nil)
		if err != nil || pid != z.pid {
			// Claimed by its waiter in the meantime.
			continue
		}
		r.reaped++
		r.log.DebugContext(ctx, "reaped orphan", "pid", z.pid, "status", ws.ExitStatus(), "signal", int(ws.Signal()))
	}
	r.seen = cur
}

// zombies lists the zombie children of the agent: from the children
// lists of its threads when the kernel has them (CONFIG_PROC_CHILDREN),
// else by scanning every process.
func (r *Reaper) zombies() []zombie {
	pids, ok := r.children()
	if !ok {
		entries, err := os.ReadDir(r.proc)
		if err != nil {
			return nil
		}
		for _, e := range entries {
			if pid, err := strconv.Atoi(e.Name()); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	var out []zombie
	for _, pid := range pids {
		b, err := os.ReadFile(r.proc + "/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		state, ppid, start, ok := parseStat(string(b))
		if ok && state == "Z" && ppid == r.self {
			out = append(out, zombie{pid: pid, start: start})
		}
	}
	return out
}

// children reads /proc/<self>/task/*/children.
func (r *Reaper) children() ([]int, bool) {
	tasks, err := os.ReadDir(r.proc + "/" + strconv.Itoa(r.self) + "/task")
	if err != nil {
		return nil, false
	}
	var pids []int
	for _, t := range tasks {
		b, err := os.ReadFile(r.proc + "/" + strconv.Itoa(r.self) + "/task/" + t.Name() + "/children")
		if errors.Is(err, os.ErrNotExist) {
			if _, serr := os.Stat(r.proc + "/" + strconv.Itoa(r.self) + "/task/" + t.Name()); serr == nil {
				// The thread is there but the kernel has no children
				// file: fall back to scanning.
				return nil, false
			}
			continue // the thread ended meanwhile
		}
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids, true
}

// parseStat reads the state, parent pid and start time of a
// /proc/<pid>/stat line. The command name may hold spaces and parentheses,
// so fields are counted from the last ')'.
func parseStat(s string) (state string, ppid int, start string, ok bool) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", 0, "", false
	}
	f := strings.Fields(s[i+1:])
	// state is field 3 of stat, ppid 4, starttime 22.
	if len(f) < 20 {
		return "", 0, "", false
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return "", 0, "", false
	}
	return f[0], ppid, f[19], true
}
