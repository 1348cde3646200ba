package initsys

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
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
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, unix.SIGCHLD)
	go func() {
		defer close(r.done)
		defer signal.Stop(sig)
		// A zombie is collected on the first scan after its grace ran
		// out: scan at least that often even without SIGCHLD.
		t := time.NewTicker(r.grace / 2)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-sig:
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

// zombies lists the zombie children of the agent.
func (r *Reaper) zombies() []zombie {
	entries, err := os.ReadDir(r.proc)
	if err != nil {
		return nil
	}
	var out []zombie
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(r.proc + "/" + e.Name() + "/stat")
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
