package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

type call struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

type fakeMounter struct {
	calls    []call
	unmounts []string
	fail     map[string]error // by target
}

func (f *fakeMounter) Mount(source, target, fstype string, flags uintptr, data string) error {
	if err := f.fail[target]; err != nil {
		return err
	}
	f.calls = append(f.calls, call{source, target, fstype, flags, data})
	return nil
}

func (f *fakeMounter) Unmount(target string, flags int) error {
	f.unmounts = append(f.unmounts, target)
	return nil
}

func fakeManager(t *testing.T) (*Manager, *fakeMounter, string) {
	t.Helper()
	root := t.TempDir()
	f := &fakeMounter{fail: map[string]error{}}
	return NewManager(Config{AllowedRoots: []string{root}, Mounter: f, SysfsRoot: filepath.Join(root, "sys"), DevRoot: "/dev"}), f, root
}

func TestDriversMountCalls(t *testing.T) {
	m, f, root := fakeManager(t)
	mp := func(n string) string { return filepath.Join(root, "m", n) }
	// A PCI path 02/01: a bridge in slot 2 of the root bus, the disk in
	// slot 1 behind it.
	bridge := filepath.Join(root, "sys/devices/pci0000:00/0000:00:02.0")
	disk := filepath.Join(bridge, "0000:01:01.0", "virtio3", "block", "vdc")
	for _, d := range []string{filepath.Join(bridge, "pci_bus", "0000:01"), disk} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	lower := mp("lower")
	os.MkdirAll(lower, 0o755)
	tests := []struct {
		s    *agentpb.Storage
		want call
	}{
		{&agentpb.Storage{Driver: "9p", Source: "kataShared", Fstype: "9p", Options: []string{"trans=virtio,version=9p2000.L,cache=mmap", "nodev"}, MountPoint: mp("9p")},
			call{"kataShared", mp("9p"), "9p", unix.MS_NODEV, "trans=virtio,version=9p2000.L,cache=mmap"}},
		{&agentpb.Storage{Driver: "virtio-fs", Source: "kataShared", Fstype: "virtiofs", MountPoint: mp("vfs") + "/"},
			call{"kataShared", mp("vfs"), "virtiofs", 0, ""}},
		{&agentpb.Storage{Driver: "ephemeral", Source: "tmpfs", Fstype: "tmpfs", Options: []string{"size=65536k"}, MountPoint: mp("shm")},
			call{"tmpfs", mp("shm"), "tmpfs", unix.MS_NODEV | unix.MS_NOSUID, "size=65536k"}},
		{&agentpb.Storage{Driver: "mmioblk", Source: "/dev/vdb", Fstype: "ext4", Options: []string{"ro"}, MountPoint: mp("blk1")},
			call{"/dev/vdb", mp("blk1"), "ext4", unix.MS_RDONLY | unix.MS_NODEV, ""}},
		{&agentpb.Storage{Driver: "blk", Source: "02/01", Fstype: "erofs", Options: []string{"ro"}, MountPoint: mp("blk2")},
			call{"/dev/vdc", mp("blk2"), "erofs", unix.MS_RDONLY | unix.MS_NODEV, ""}},
		{&agentpb.Storage{Driver: "overlayfs", Source: "overlay", Fstype: "overlay", Options: []string{"lowerdir=" + lower}, MountPoint: mp("ovl")},
			call{"overlay", mp("ovl"), "overlay", unix.MS_NODEV, "lowerdir=" + lower}},
	}
	for _, tt := range tests {
		f.calls = nil
		got, err := m.MountStorages(context.Background(), "c1", []*agentpb.Storage{tt.s})
		if err != nil {
			t.Errorf("%s: %v", tt.s.Driver, err)
			continue
		}
		if !reflect.DeepEqual(got, []string{strings.TrimSuffix(tt.s.MountPoint, "/")}) {
			t.Errorf("%s: mount points %v", tt.s.Driver, got)
		}
		if len(f.calls) != 1 || f.calls[0] != tt.want {
			t.Errorf("%s: mount calls %+v, want %+v", tt.s.Driver, f.calls, tt.want)
		}
	}
	if err := m.UnmountOwner(context.Background(), "c1"); err != nil {
		t.Fatal(err)
	}
	want := []string{mp("ovl"), mp("blk2"), mp("blk1"), mp("shm"), mp("vfs"), mp("9p")}
	if !reflect.DeepEqual(f.unmounts, want) {
		t.Errorf("unmounts %v, want newest first %v", f.unmounts, want)
	}
	for _, p := range want {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("mount point %s left behind", p)
		}
	}
}

func TestRejects(t *testing.T) {
	m, f, root := fakeManager(t)
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	tests := map[string]*agentpb.Storage{
		"mount point outside":    {Driver: "local", MountPoint: "/etc/x"},
		"relative mount point":   {Driver: "local", MountPoint: "run/x"},
		"dotdot":                 {Driver: "local", MountPoint: root + "/a/../../etc"},
		"symlinked parent":       {Driver: "local", MountPoint: root + "/link/x"},
		"root itself":            {Driver: "local", MountPoint: root},
		"unknown driver":         {Driver: "nfs", MountPoint: root + "/n"},
		"bad tag":                {Driver: "9p", Source: "../x", MountPoint: root + "/t"},
		"bind from outside":      {Driver: "bind", Source: "/etc", MountPoint: root + "/b"},
		"bind through symlink":   {Driver: "bind", Source: root + "/link", MountPoint: root + "/b2"},
		"selinux context":        {Driver: "9p", Source: "tag", Options: []string{"context=system_u"}, MountPoint: root + "/c"},
		"option with comma data": {Driver: "ephemeral", Options: []string{"size=1m;rm -rf"}, MountPoint: root + "/e"},
		"overlay lower outside":  {Driver: "overlayfs", Options: []string{"lowerdir=/etc"}, MountPoint: root + "/o"},
		"overlay unknown option": {Driver: "overlayfs", Options: []string{"lowerdir=" + root, "nfs_export=on"}, MountPoint: root + "/o2"},
		"block by path":          {Driver: "blk", Source: "/etc/shadow", Fstype: "ext4", MountPoint: root + "/d"},
		"block fstype":           {Driver: "mmioblk", Source: "/dev/vdb", Fstype: "ntfs", MountPoint: root + "/d2"},
		"verity without blocks":  {Driver: "mmioblk", Source: "/dev/vdb", Fstype: "erofs", Options: []string{"io.katacontainers.fs-opt.root-hash=" + strings.Repeat("ab", 32)}, MountPoint: root + "/d3"},
		"too many options":       {Driver: "ephemeral", Options: make([]string, 100), MountPoint: root + "/e2"},
	}
	for name, s := range tests {
		if _, err := m.MountStorages(context.Background(), "c", []*agentpb.Storage{s}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want invalid argument", name, err)
		}
	}
	if _, err := m.MountStorages(context.Background(), "c", []*agentpb.Storage{{Driver: "blk", Source: "05/00", Fstype: "ext4", MountPoint: root + "/nodev"}}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("missing PCI device: %v, want not found", err)
	}
	if len(f.calls) != 0 {
		t.Errorf("mounted despite bad input: %+v", f.calls)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("something was created through the symlink: %v", ents)
	}
}

func TestHalfWayFailureUndoes(t *testing.T) {
	m, f, root := fakeManager(t)
	f.fail[root+"/b"] = unix.EIO
	_, err := m.MountStorages(context.Background(), "c", []*agentpb.Storage{
		{Driver: "ephemeral", MountPoint: root + "/a"},
		{Driver: "ephemeral", MountPoint: root + "/b"},
	})
	if !errors.Is(err, unix.EIO) {
		t.Fatalf("err = %v", err)
	}
	if !reflect.DeepEqual(f.unmounts, []string{root + "/a"}) {
		t.Errorf("unmounts %v, want the first storage undone", f.unmounts)
	}
	if got := m.MountPoints("c"); len(got) != 0 {
		t.Errorf("still tracked: %v", got)
	}
	for _, p := range []string{root + "/a", root + "/b"} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind", p)
		}
	}
}

func TestSharedStorageIsCounted(t *testing.T) {
	m, f, root := fakeManager(t)
	s := &agentpb.Storage{Driver: "9p", Source: "kataShared", MountPoint: root + "/shared"}
	ctx := context.Background()
	for _, owner := range []string{"", "c1", "c2"} {
		if _, err := m.MountStorages(ctx, owner, []*agentpb.Storage{s}); err != nil {
			t.Fatal(err)
		}
	}
	if len(f.calls) != 1 {
		t.Errorf("mounted %d times, want once", len(f.calls))
	}
	other := &agentpb.Storage{Driver: "9p", Source: "otherTag", MountPoint: root + "/shared"}
	if _, err := m.MountStorages(ctx, "c3", []*agentpb.Storage{other}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("different storage at the same point: %v, want already exists", err)
	}
	for i, owner := range []string{"c1", "", "c2"} {
		if err := m.UnmountOwner(ctx, owner); err != nil {
			t.Fatal(err)
		}
		if got, want := len(f.unmounts), map[bool]int{true: 1, false: 0}[i == 2]; got != want {
			t.Errorf("after releasing %q: %d unmounts, want %d", owner, got, want)
		}
	}
}

// TestRealMounts mounts for real (as root) in a temporary root.
func TestRealMounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	root := t.TempDir()
	m := NewManager(Config{AllowedRoots: []string{root}})
	ctx := context.Background()
	src := filepath.Join(root, "src")
	lower := filepath.Join(root, "lower")
	for _, d := range []string{src, lower} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(src, "file"), []byte("from bind"), 0o644)
	os.WriteFile(filepath.Join(lower, "base"), []byte("lower"), 0o644)
	upper, work := filepath.Join(root, "upper"), filepath.Join(root, "work")
	os.MkdirAll(upper, 0o755)
	os.MkdirAll(work, 0o755)
	gid := uint32(4242)
	storages := []*agentpb.Storage{
		{Driver: "local", MountPoint: filepath.Join(root, "m/local"), FsGroup: &agentpb.FSGroup{GroupId: gid}},
		{Driver: "ephemeral", Source: "tmpfs", Fstype: "tmpfs", Options: []string{"size=1m"}, MountPoint: filepath.Join(root, "m/tmp")},
		{Driver: "bind", Source: src, Options: []string{"ro"}, MountPoint: filepath.Join(root, "m/bind")},
		{Driver: "overlayfs", Options: []string{"lowerdir=" + lower, "upperdir=" + upper, "workdir=" + work}, MountPoint: filepath.Join(root, "m/ovl")},
	}
	mps, err := m.MountStorages(ctx, "c1", storages)
	if err != nil {
		t.Fatal(err)
	}
	defer m.UnmountOwner(ctx, "c1")
	var st unix.Statfs_t
	if err := unix.Statfs(mps[1], &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		t.Errorf("ephemeral: statfs type %#x, %v", st.Type, err)
	}
	if b, err := os.ReadFile(filepath.Join(mps[2], "file")); err != nil || string(b) != "from bind" {
		t.Errorf("bind: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(mps[2], "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write into the read-only bind: %v, want EROFS", err)
	}
	if b, err := os.ReadFile(filepath.Join(mps[3], "base")); err != nil || string(b) != "lower" {
		t.Errorf("overlay: %q, %v", b, err)
	}
	var lst unix.Stat_t
	if err := unix.Stat(mps[0], &lst); err != nil || lst.Gid != gid || lst.Mode&unix.S_ISGID == 0 || lst.Mode&0o070 != 0o070 {
		t.Errorf("fs_group on local: gid %d mode %o, %v", lst.Gid, lst.Mode, err)
	}
	if err := m.UnmountOwner(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), root+"/m") {
		t.Errorf("mounts left behind:\n%s", grep(string(mounts), root))
	}
	if _, err := os.Stat(filepath.Join(root, "m")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("mount point directories left behind: %v", err)
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return fmt.Sprint(out)
}

// fakePuller writes one file named after the image, as a pull would.
type fakePuller struct {
	pulls []string
	fail  error
}

func (p *fakePuller) PullImage(_ context.Context, image, dest string) error {
	p.pulls = append(p.pulls, image)
	if p.fail != nil {
		return p.fail
	}
	if ents, err := os.ReadDir(dest); err != nil || len(ents) != 0 {
		return fmt.Errorf("dest %s not an empty directory: %v %v", dest, ents, err)
	}
	return os.WriteFile(filepath.Join(dest, "image"), []byte(image), 0o644)
}

// TestGuestPull: an image_guest_pull storage makes the image service pull
// the source into the mount point; a second container naming the same
// storage shares it; the last release empties and removes the rootfs.
// Malformed descriptions, references and a missing service are refused
// before anything is pulled.
func TestGuestPull(t *testing.T) {
	root := t.TempDir()
	p := &fakePuller{}
	m := NewManager(Config{AllowedRoots: []string{root}, Mounter: &fakeMounter{}, Images: p})
	rootfs := filepath.Join(root, "c1", "rootfs")
	info := `image_guest_pull={"metadata":{"io.kubernetes.cri.image-name":"registry.test/app:1"}}`
	s := &agentpb.Storage{Driver: GuestPullDriver, Source: "registry.test/app:1", Fstype: "overlay",
		DriverOptions: []string{info}, MountPoint: rootfs}
	ctx := context.Background()
	if _, err := m.MountStorages(ctx, "c1", []*agentpb.Storage{s}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(rootfs, "image")); string(b) != "registry.test/app:1" {
		t.Fatalf("rootfs content %q", b)
	}
	if _, err := m.MountStorages(ctx, "c2", []*agentpb.Storage{s}); err != nil {
		t.Fatal(err)
	}
	if len(p.pulls) != 1 {
		t.Fatalf("pulls %v: a shared storage was pulled twice", p.pulls)
	}
	if err := m.UnmountOwner(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "image")); err != nil {
		t.Fatalf("rootfs gone while c2 uses it: %v", err)
	}
	if err := m.UnmountOwner(ctx, "c2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "c1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after the last release: %v, want the rootfs and its parent gone", err)
	}

	bad := map[string]*agentpb.Storage{
		"space in reference": {Source: "registry.test/app:1 --flag"},
		"newline":            {Source: "registry.test/app\n:1"},
		"empty reference":    {Source: ""},
		"too long":           {Source: strings.Repeat("a", 2000)},
		"pause sentinel":     {Source: "pause"},
		"unknown option":     {Source: "r/a:1", DriverOptions: []string{"other=1"}},
		"not JSON":           {Source: "r/a:1", DriverOptions: []string{"image_guest_pull={"}},
		"unknown JSON field": {Source: "r/a:1", DriverOptions: []string{`image_guest_pull={"metadata":{},"x":1}`}},
		"trailing JSON":      {Source: "r/a:1", DriverOptions: []string{`image_guest_pull={"metadata":{}}{}`}},
		"fstype":             {Source: "r/a:1", Fstype: "ext4"},
		"mount point":        {Source: "r/a:1", MountPoint: "/etc"},
		"mount point ..":     {Source: "r/a:1", MountPoint: root + "/c3/../../x"},
	}
	for name, b := range bad {
		b.Driver = GuestPullDriver
		if b.MountPoint == "" {
			b.MountPoint = filepath.Join(root, "c3", "rootfs")
		}
		p.pulls = nil
		_, err := m.MountStorages(ctx, "c3", []*agentpb.Storage{b})
		if err == nil || len(p.pulls) != 0 {
			t.Errorf("%s: %v, pulls %v; want a refusal before any pull", name, err, p.pulls)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "c3")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused storages left %s", filepath.Join(root, "c3"))
	}

	// A failed pull (a denied image, say) leaves nothing and says why.
	p.fail = errors.New("image denied by signature policy")
	_, err := m.MountStorages(ctx, "c4", []*agentpb.Storage{{Driver: GuestPullDriver, Source: "r/a:1", MountPoint: filepath.Join(root, "c4", "rootfs")}})
	if err == nil || !strings.Contains(err.Error(), "guest pull of r/a:1: image denied by signature policy") {
		t.Fatalf("failed pull: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "c4")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed pull left %s", filepath.Join(root, "c4"))
	}

	none := NewManager(Config{AllowedRoots: []string{root}, Mounter: &fakeMounter{}})
	if _, err := none.MountStorages(ctx, "c5", []*agentpb.Storage{{Driver: GuestPullDriver, Source: "r/a:1", MountPoint: filepath.Join(root, "c5", "rootfs")}}); !errdefs.IsNotImplemented(err) {
		t.Fatalf("no image service: %v", err)
	}
}

// blockingPuller holds every pull until release is closed.
type blockingPuller struct {
	started chan string
	release chan struct{}
	mu      sync.Mutex
	pulls   int
}

func (p *blockingPuller) PullImage(ctx context.Context, image, dest string) error {
	p.mu.Lock()
	p.pulls++
	p.mu.Unlock()
	p.started <- image
	<-p.release
	return os.WriteFile(filepath.Join(dest, "image"), []byte(image), 0o644)
}

// TestGuestPullDoesNotBlockOthers: while one container's image is being
// pulled, other storages mount and unmount; a second container naming the
// same image waits for that pull and shares it instead of pulling again.
func TestGuestPullDoesNotBlockOthers(t *testing.T) {
	root := t.TempDir()
	p := &blockingPuller{started: make(chan string, 4), release: make(chan struct{})}
	m := NewManager(Config{AllowedRoots: []string{root}, Mounter: &fakeMounter{fail: map[string]error{}}, Images: p})
	ctx := context.Background()
	pull := &agentpb.Storage{Driver: GuestPullDriver, Source: "r/a:1", MountPoint: filepath.Join(root, "c1", "rootfs")}
	first := make(chan error, 1)
	go func() { _, err := m.MountStorages(ctx, "c1", []*agentpb.Storage{pull}); first <- err }()
	<-p.started

	tmp := &agentpb.Storage{Driver: "ephemeral", Source: "tmpfs", Fstype: "tmpfs", MountPoint: filepath.Join(root, "c9", "tmp")}
	if _, err := m.MountStorages(ctx, "c9", []*agentpb.Storage{tmp}); err != nil {
		t.Fatalf("another container's storage during a pull: %v", err)
	}
	if err := m.UnmountOwner(ctx, "c9"); err != nil {
		t.Fatalf("a removal during a pull: %v", err)
	}

	second := make(chan error, 1)
	go func() { _, err := m.MountStorages(ctx, "c2", []*agentpb.Storage{pull}); second <- err }()
	select {
	case err := <-second:
		t.Fatalf("second request for the image being pulled returned early: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(p.release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	if p.pulls != 1 {
		t.Errorf("%d pulls for one image, want 1", p.pulls)
	}
	if b, _ := os.ReadFile(filepath.Join(pull.MountPoint, "image")); string(b) != "r/a:1" {
		t.Errorf("rootfs %q", b)
	}
	if got := m.MountPoints("c2"); len(got) != 1 || got[0] != pull.MountPoint {
		t.Errorf("c2 holds %v", got)
	}
}
