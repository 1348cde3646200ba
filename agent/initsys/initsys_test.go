package initsys

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

func TestParseRootFSType(t *testing.T) {
	tests := []struct {
		name      string
		mountinfo string
		want      bool
		wantErr   bool
	}{
		{"initramfs", "1 1 0:2 / / rw - rootfs rootfs rw\n20 1 0:20 / /proc rw,nosuid - proc proc rw\n", true, false},
		{"after switch root", "1 1 0:2 / / rw - rootfs rootfs rw\n30 1 0:25 / / rw,relatime - tmpfs tmpfs rw,mode=755\n", false, false},
		{"disk root", "25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n", false, false},
		{"optional fields", "25 1 8:1 / / rw shared:1 master:2 - rootfs rootfs rw\n", true, false},
		{"no root", "20 1 0:20 / /proc rw - proc proc rw\n", false, true},
		{"garbage", "not a mountinfo line\n", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseRootFSType(strings.NewReader(tt.mountinfo))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("initramfs = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRootIsInitramfsOnThisHost(t *testing.T) {
	got, err := rootIsInitramfs("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if got {
		t.Error("a host root taken for an initramfs")
	}
}

func TestParseModulesLoad(t *testing.T) {
	in := "# written by cocoon-rootfs\n\n/lib/modules/6.1/a.ko\n  /lib/modules/6.1/b.ko  x=1 y=2 \n"
	got, err := ParseModulesLoad(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Module{{Path: "/lib/modules/6.1/a.ko"}, {Path: "/lib/modules/6.1/b.ko", Params: "x=1 y=2"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	for _, bad := range []string{"a.ko\n", "/lib/modules/x.so\n", "relative/x.ko p=1\n"} {
		if _, err := ParseModulesLoad(strings.NewReader(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

type fakeLoader struct {
	calls []string
	fail  map[string]error
}

func (f *fakeLoader) Load(path, params string) error {
	f.calls = append(f.calls, strings.TrimSpace(path+" "+params))
	return f.fail[path]
}

func TestLoadModules(t *testing.T) {
	list := filepath.Join(t.TempDir(), "modules.load")
	body := "/m/virtio.ko\n/m/virtio_ring.ko\n/m/absent_hw.ko\n/m/broken.ko\n/m/already.ko\n/m/virtio_console.ko debug=1\n"
	if err := os.WriteFile(list, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	l := &fakeLoader{fail: map[string]error{
		"/m/absent_hw.ko": unix.ENODEV,
		"/m/broken.ko":    unix.ENOEXEC,
		"/m/already.ko":   unix.EEXIST,
	}}
	loaded, errs := LoadModules(list, l)
	wantCalls := []string{"/m/virtio.ko", "/m/virtio_ring.ko", "/m/absent_hw.ko", "/m/broken.ko", "/m/already.ko", "/m/virtio_console.ko debug=1"}
	if !reflect.DeepEqual(l.calls, wantCalls) {
		t.Errorf("load order %q, want %q", l.calls, wantCalls)
	}
	if loaded != 5 {
		t.Errorf("loaded = %d, want 5", loaded)
	}
	if len(errs) != 1 || !errors.Is(errs[0], unix.ENOEXEC) || !strings.Contains(errs[0].Error(), "broken.ko") {
		t.Errorf("errors = %v, want one naming broken.ko", errs)
	}

	loaded, errs = LoadModules(filepath.Join(t.TempDir(), "missing"), l)
	if loaded != 0 || errs != nil {
		t.Errorf("missing list: %d, %v; want nothing", loaded, errs)
	}
}

func TestCopyTreeAndRemoveTree(t *testing.T) {
	requireRoot(t)
	src := t.TempDir()
	dst := t.TempDir()
	mk := func(p string, mode os.FileMode, uid int, data string) {
		t.Helper()
		full := filepath.Join(src, p)
		if err := os.WriteFile(full, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(full, uid, uid); err != nil {
			t.Fatal(err)
		}
		if err := unix.Chmod(full, uint32(mode)); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"etc/cocoon", "lib/modules/6.1", "proc", "mnt"} {
		if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(src, "etc"), 0o711); err != nil {
		t.Fatal(err)
	}
	mk("init", 0o755, 0, "agent")
	mk("etc/cocoon/setuid", 0o4750, 1000, "s")
	mk("lib/modules/6.1/a.ko", 0o644, 0, strings.Repeat("k", 1<<20))
	mk("proc/not-copied", 0o644, 0, "x")
	if err := os.Symlink("../init", filepath.Join(src, "etc/link")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(src, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A mount inside the tree is neither copied nor removed.
	if err := unix.Mount("tmpfs", filepath.Join(src, "mnt"), "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(filepath.Join(src, "mnt"), unix.MNT_DETACH)
	if err := os.WriteFile(filepath.Join(src, "mnt/on-other-fs"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}

	skip := map[string]bool{filepath.Join(src, "proc"): true}
	mk("running-binary", 0o755, 0, "not copied")
	leave := map[string]bool{filepath.Join(src, "running-binary"): true}
	if err := copyTree(src, dst, skip, leave); err != nil {
		t.Fatal(err)
	}
	check := func(p string, mode os.FileMode, uid int, data string) {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dst, p), &st); err != nil {
			t.Fatal(err)
		}
		if got := os.FileMode(st.Mode & 0o7777); got != mode&0o7777 {
			t.Errorf("%s mode %o, want %o", p, got, mode)
		}
		if int(st.Uid) != uid || int(st.Gid) != uid {
			t.Errorf("%s owner %d:%d, want %d:%d", p, st.Uid, st.Gid, uid, uid)
		}
		if data != "" {
			b, err := os.ReadFile(filepath.Join(dst, p))
			if err != nil || string(b) != data {
				t.Errorf("%s content differs (%v)", p, err)
			}
		}
	}
	check("init", 0o755, 0, "agent")
	check("etc", 0o711, 0, "")
	check("etc/cocoon/setuid", 0o4750, 1000, "s")
	check("lib/modules/6.1/a.ko", 0o644, 0, strings.Repeat("k", 1<<20))
	if l, err := os.Readlink(filepath.Join(dst, "etc/link")); err != nil || l != "../init" {
		t.Errorf("symlink = %q, %v", l, err)
	}
	for _, absent := range []string{"fifo", "proc/not-copied", "mnt/on-other-fs", "running-binary"} {
		if _, err := os.Lstat(filepath.Join(dst, absent)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s copied (%v)", absent, err)
		}
	}
	for _, present := range []string{"proc", "mnt"} {
		if fi, err := os.Stat(filepath.Join(dst, present)); err != nil || !fi.IsDir() {
			t.Errorf("%s: want an empty directory (%v)", present, err)
		}
	}

	if err := removeTree(src, skip); err != nil {
		t.Fatal(err)
	}
	var left []string
	filepath.Walk(src, func(p string, _ os.FileInfo, _ error) error {
		left = append(left, strings.TrimPrefix(p, src))
		return nil
	})
	want := []string{"", "/mnt", "/mnt/on-other-fs", "/proc", "/proc/not-copied"}
	if !reflect.DeepEqual(left, want) {
		t.Errorf("left after remove: %q, want %q", left, want)
	}
}

func TestParseStat(t *testing.T) {
	line := "4242 (we (ird) name) Z 77 4242 4242 0 -1 4194560 97 0 0 0 0 0 0 0 20 0 1 0 123456 0 0"
	state, ppid, start, ok := parseStat(line)
	if !ok || state != "Z" || ppid != 77 || start != "123456" {
		t.Errorf("got %q %d %q %v", state, ppid, start, ok)
	}
	if _, _, _, ok := parseStat("12 (x) S"); ok {
		t.Error("short line parsed")
	}
}

// TestReaper checks that orphans reparented to a subreaper get collected
// while the exit statuses of the children someone waits for, promptly or a
// little late, are left to their waiters.
func TestReaper(t *testing.T) {
	if testing.Short() {
		t.Skip("makes the test process a subreaper")
	}
	r, err := StartReaper(context.Background(), ReaperOptions{Grace: 400 * time.Millisecond, Subreaper: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()

	// Orphans: the shells exit at once, their sleeps are reparented to us.
	for i := 0; i < 3; i++ {
		if out, err := exec.Command("sh", "-c", "sleep 0.1 & exit 0").CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}

	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := 0; i < 30; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := exec.Command("sh", "-c", "exit 7").Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 7 {
				errs <- err
			}
		}()
	}
	// A child whose waiter comes a little late, within the grace period.
	late := exec.Command("sh", "-c", "exit 3")
	if err := late.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	err = late.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("late waiter got %v, want exit status 3", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a waited child lost its status: %v", err)
	}

	deadline := time.Now().Add(time.Minute)
	for r.Reaped() < 3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := r.Reaped(); got != 3 {
		t.Errorf("reaped %d orphans, want 3", got)
	}
	if zs := r.zombies(); len(zs) != 0 {
		t.Errorf("zombie children left: %v", zs)
	}
}

func TestReaperListsChildren(t *testing.T) {
	cmd := exec.Command("sleep", "10")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	r := &Reaper{self: os.Getpid(), proc: "/proc"}
	pids, ok := r.children()
	if !ok {
		t.Skip("this kernel has no /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN): the reaper scans every process")
	}
	if !slices.Contains(pids, cmd.Process.Pid) {
		t.Errorf("children %v lack the child %d", pids, cmd.Process.Pid)
	}
}
