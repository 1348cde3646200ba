// Package storage mounts the storages of CreateSandbox and CreateContainer
// requests in the guest, with the Kata agent's driver names: local,
// ephemeral (tmpfs), bind, virtio-fs, 9p, blk and mmioblk (virtio disks),
// overlayfs, and dm-verity layers (a blk/mmioblk storage whose options
// carry a root hash). Every path comes from the untrusted host: mount
// points must lie under the allowed roots, no component may be a symlink
// or "..", options are checked, and a storage mounted for several owners
// is reference-counted.
package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/cocoon-containers/cocoon/agent/verity"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// DefaultAllowedRoots are where mount points may be: the Kata runtime's
// guest directories and the agent's own.
var DefaultAllowedRoots = []string{"/run/kata-containers", "/run/cocoon"}

// Limits on host input.
const (
	maxStorages  = 64
	maxOptions   = 64
	maxOptionLen = 4096
	maxPathLen   = 4096
)

// Config configures a Manager.
type Config struct {
	// AllowedRoots are the directories mount points, bind sources and
	// overlay directories must lie under (DefaultAllowedRoots).
	AllowedRoots []string
	// SysfsRoot and DevRoot locate /sys and /dev (tests use fakes).
	SysfsRoot, DevRoot string
	// Mounter does the mounts (the kernel's when nil).
	Mounter Mounter
	// Images pulls the images image_guest_pull storages name; without it
	// such storages are refused.
	Images ImagePuller
	Logger *slog.Logger
}

// ImagePuller pulls an image into dest (missing or empty), leaving dest as
// it was on error. image/guestpull implements it.
type ImagePuller interface {
	PullImage(ctx context.Context, image, dest string) error
}

// GuestPullDriver is the Kata driver name of a storage whose image the
// guest pulls itself.
const GuestPullDriver = "image_guest_pull"

// Mounter is the kernel's mount interface, narrowed for tests.
type Mounter interface {
	Mount(source, target, fstype string, flags uintptr, data string) error
	Unmount(target string, flags int) error
}

type kernelMounter struct{}

func (kernelMounter) Mount(source, target, fstype string, flags uintptr, data string) error {
	return unix.Mount(source, target, fstype, flags, data)
}

func (kernelMounter) Unmount(target string, flags int) error { return unix.Unmount(target, flags) }

// Manager tracks what it mounted for whom.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	mounts  map[string]*mounted // by mount point
	byOwner map[string][]string // mount points in mount order
}

type mounted struct {
	key     string // what was mounted: a second request must match
	owners  map[string]int
	created []string // directories made for it, deepest last
	undo    func(ctx context.Context) error
	// pending is open while a guest pull fills the mount point without
	// the manager's lock; a second request for it waits.
	pending chan struct{}
}

// NewManager returns a Manager.
func NewManager(cfg Config) *Manager {
	if len(cfg.AllowedRoots) == 0 {
		cfg.AllowedRoots = DefaultAllowedRoots
	}
	if cfg.SysfsRoot == "" {
		cfg.SysfsRoot = "/sys"
	}
	if cfg.DevRoot == "" {
		cfg.DevRoot = "/dev"
	}
	if cfg.Mounter == nil {
		cfg.Mounter = kernelMounter{}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Manager{cfg: cfg, log: log, mounts: map[string]*mounted{}, byOwner: map[string][]string{}}
}

// MountStorages mounts storages for owner (a container id, or "" for the
// sandbox) and returns their mount points. On error, what this call
// mounted is unmounted again.
func (m *Manager) MountStorages(ctx context.Context, owner string, storages []*agentpb.Storage) ([]string, error) {
	if len(storages) > maxStorages {
		return nil, fmt.Errorf("%d storages, more than %d: %w", len(storages), maxStorages, errdefs.ErrInvalidArgument)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var done []string
	for _, s := range storages {
		mp, err := m.mountOne(ctx, owner, s)
		if err != nil {
			for i := len(done) - 1; i >= 0; i-- {
				if uerr := m.release(ctx, owner, done[i]); uerr != nil {
					m.log.WarnContext(ctx, "undo storage", "mount_point", done[i], "error", uerr)
				}
			}
			return nil, err
		}
		done = append(done, mp)
	}
	return done, nil
}

// UnmountOwner releases everything mounted for owner, newest first.
func (m *Manager) UnmountOwner(ctx context.Context, owner string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	mps := m.byOwner[owner]
	var errs []error
	for i := len(mps) - 1; i >= 0; i-- {
		if err := m.release(ctx, owner, mps[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// MountPoints returns what is mounted for owner (tests, diagnostics).
func (m *Manager) MountPoints(owner string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.byOwner[owner])
}

func (m *Manager) mountOne(ctx context.Context, owner string, s *agentpb.Storage) (string, error) {
	// The Kata runtime sends the shared directory with a trailing slash.
	mp := s.GetMountPoint()
	if len(mp) > 1 && strings.HasSuffix(mp, "/") {
		mp = mp[:len(mp)-1]
	}
	if err := m.checkPath("mount point", mp); err != nil {
		return "", err
	}
	if mp != s.GetMountPoint() {
		s = proto.Clone(s).(*agentpb.Storage)
		s.MountPoint = mp
	}
	key := storageKey(s)
	for {
		cur, ok := m.mounts[mp]
		if !ok {
			break
		}
		if cur.key != key {
			return "", fmt.Errorf("storage at %s: already mounted with a different source or options: %w", mp, errdefs.ErrAlreadyExists)
		}
		if cur.pending == nil {
			cur.owners[owner]++
			m.byOwner[owner] = append(m.byOwner[owner], mp)
			return mp, nil
		}
		// Another request is pulling this image: wait for it, then look
		// again (it may have failed and gone).
		p := cur.pending
		m.mu.Unlock()
		select {
		case <-p:
		case <-ctx.Done():
		}
		m.mu.Lock()
		if err := ctx.Err(); err != nil {
			return "", fmt.Errorf("storage at %s: %w", mp, err)
		}
	}
	created, err := m.mkdirs(mp)
	if err != nil {
		return "", err
	}
	if s.GetDriver() == GuestPullDriver {
		return m.mountGuestPull(ctx, owner, s, key, created)
	}
	undo, err := m.mount(ctx, s)
	if err != nil {
		removeDirs(created)
		return "", fmt.Errorf("storage %s (driver %q): %w", mp, s.GetDriver(), err)
	}
	if err := m.setGroup(s, mp); err != nil {
		undo(ctx)
		removeDirs(created)
		return "", err
	}
	m.mounts[mp] = &mounted{key: key, owners: map[string]int{owner: 1}, created: created, undo: undo}
	m.byOwner[owner] = append(m.byOwner[owner], mp)
	m.log.DebugContext(ctx, "storage mounted", "driver", s.GetDriver(), "mount_point", mp, "owner", owner)
	return mp, nil
}

// mountGuestPull pulls with the manager's lock released: a pull can take
// minutes, and other containers' storages (and removals) must not wait
// for it. The mount point is reserved meanwhile. Called and returns with
// m.mu held.
func (m *Manager) mountGuestPull(ctx context.Context, owner string, s *agentpb.Storage, key string, created []string) (string, error) {
	mp := s.GetMountPoint()
	e := &mounted{key: key, owners: map[string]int{}, created: created, pending: make(chan struct{})}
	m.mounts[mp] = e
	m.mu.Unlock()
	undo, err := m.guestPull(ctx, s)
	m.mu.Lock()
	close(e.pending)
	e.pending = nil
	if err != nil {
		delete(m.mounts, mp)
		removeDirs(created)
		return "", fmt.Errorf("storage %s (driver %q): %w", mp, s.GetDriver(), err)
	}
	e.undo = undo
	e.owners[owner] = 1
	m.byOwner[owner] = append(m.byOwner[owner], mp)
	m.log.DebugContext(ctx, "storage mounted", "driver", s.GetDriver(), "mount_point", mp, "owner", owner)
	return mp, nil
}

// release drops owner's reference to mp and unmounts it when it was the
// last one.
func (m *Manager) release(ctx context.Context, owner, mp string) error {
	mps := m.byOwner[owner]
	if i := slices.Index(mps, mp); i >= 0 {
		m.byOwner[owner] = slices.Delete(mps, i, i+1)
	}
	if len(m.byOwner[owner]) == 0 {
		delete(m.byOwner, owner)
	}
	cur, ok := m.mounts[mp]
	if !ok {
		return nil
	}
	cur.owners[owner]--
	if cur.owners[owner] <= 0 {
		delete(cur.owners, owner)
	}
	if len(cur.owners) > 0 {
		return nil
	}
	delete(m.mounts, mp)
	err := cur.undo(ctx)
	removeDirs(cur.created)
	if err != nil {
		return fmt.Errorf("unmount %s: %w", mp, err)
	}
	return nil
}

func storageKey(s *agentpb.Storage) string {
	return strings.Join([]string{s.GetDriver(), s.GetSource(), s.GetFstype(), strings.Join(s.GetOptions(), ","),
		strings.Join(s.GetDriverOptions(), ",")}, "\x00")
}

// checkPath requires an absolute, clean path under an allowed root.
func (m *Manager) checkPath(what, p string) error {
	if p == "" || len(p) > maxPathLen || !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.ContainsRune(p, 0) {
		return fmt.Errorf("%s %q: want an absolute, clean path: %w", what, p, errdefs.ErrInvalidArgument)
	}
	for _, r := range m.cfg.AllowedRoots {
		if p != r && strings.HasPrefix(p, r+"/") {
			return nil
		}
	}
	return fmt.Errorf("%s %q: not under %s: %w", what, p, strings.Join(m.cfg.AllowedRoots, " or "), errdefs.ErrInvalidArgument)
}

// noSymlinks fails if an existing component of p is a symlink: a symlink
// planted in a shared directory must not redirect a mount.
func noSymlinks(p string) error {
	cur := "/"
	for _, c := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		cur = filepath.Join(cur, c)
		fi, err := os.Lstat(cur)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("%s: %s is a symlink: %w", p, cur, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// mkdirs creates p and its missing parents, refusing symlinks, and returns
// the directories it made.
func (m *Manager) mkdirs(p string) ([]string, error) {
	if err := noSymlinks(p); err != nil {
		return nil, err
	}
	var missing []string
	for d := p; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		}
		missing = append([]string{d}, missing...)
	}
	var made []string
	for _, d := range missing {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			removeDirs(made)
			return nil, fmt.Errorf("create mount point %s: %w", p, err)
		}
		made = append(made, d)
	}
	// Re-check: nothing may have swapped a component for a symlink.
	if err := noSymlinks(p); err != nil {
		removeDirs(made)
		return nil, err
	}
	return made, nil
}

func removeDirs(dirs []string) {
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Remove(dirs[i])
	}
}

// setGroup applies fs_group as Kata does: the mount's root is given the
// group, group read/write/execute and setgid, so files created in it
// belong to the group. Read-only mounts are left alone.
func (m *Manager) setGroup(s *agentpb.Storage, mp string) error {
	g := s.GetFsGroup()
	if g == nil || g.GetGroupId() == 0 || slices.Contains(s.GetOptions(), "ro") {
		return nil
	}
	if err := os.Lchown(mp, -1, int(g.GetGroupId())); err != nil {
		return fmt.Errorf("fs_group of %s: %w", mp, err)
	}
	fi, err := os.Lstat(mp)
	if err != nil {
		return err
	}
	mode := uint32(fi.Mode().Perm()) | 0o070 | unix.S_ISGID
	if err := unix.Chmod(mp, mode); err != nil {
		return fmt.Errorf("fs_group of %s: %w", mp, err)
	}
	return nil
}

// mountFlags are the options that map to mount flags; the rest go to the
// filesystem as data.
var mountFlags = map[string]struct {
	flag  uintptr
	clear bool
}{
	"ro": {unix.MS_RDONLY, false}, "rw": {unix.MS_RDONLY, true},
	"nodev": {unix.MS_NODEV, false}, "nosuid": {unix.MS_NOSUID, false}, "noexec": {unix.MS_NOEXEC, false},
	"dev": {unix.MS_NODEV, true}, "suid": {unix.MS_NOSUID, true}, "exec": {unix.MS_NOEXEC, true},
	"relatime": {unix.MS_RELATIME, false}, "noatime": {unix.MS_NOATIME, false},
	"sync": {unix.MS_SYNCHRONOUS, false}, "dirsync": {unix.MS_DIRSYNC, false},
	"bind": {unix.MS_BIND, false}, "rbind": {unix.MS_BIND | unix.MS_REC, false},
}

// dataOption is a filesystem option: a key with an optional plain value.
var dataOption = regexp.MustCompile(`^[A-Za-z0-9_.-]+(=[A-Za-z0-9_.:/@+=-]*)?$`)

// forbiddenData are options the host must not pass to any filesystem.
var forbiddenData = map[string]bool{"context": true, "fscontext": true, "defcontext": true, "rootcontext": true}

// parseOptions splits options into flags and filesystem data.
func parseOptions(opts []string) (uintptr, []string, error) {
	if len(opts) > maxOptions {
		return 0, nil, fmt.Errorf("%d mount options, more than %d: %w", len(opts), maxOptions, errdefs.ErrInvalidArgument)
	}
	var flags uintptr
	var data []string
	for _, o := range opts {
		// Kata sends some data options joined with commas in one entry.
		for _, p := range strings.Split(o, ",") {
			if p == "" {
				continue
			}
			if len(p) > maxOptionLen {
				return 0, nil, fmt.Errorf("mount option too long: %w", errdefs.ErrInvalidArgument)
			}
			if f, ok := mountFlags[p]; ok {
				if f.clear {
					flags &^= f.flag
				} else {
					flags |= f.flag
				}
				continue
			}
			key, _, _ := strings.Cut(p, "=")
			if !dataOption.MatchString(p) || forbiddenData[key] {
				return 0, nil, fmt.Errorf("mount option %q not allowed: %w", p, errdefs.ErrInvalidArgument)
			}
			data = append(data, p)
		}
	}
	return flags, data, nil
}

// Share tags and device names the host may name.
var (
	tagRE      = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,35}$`)
	virtioDisk = regexp.MustCompile(`^/dev/vd[a-z]{1,3}$`)
	pciPathRE  = regexp.MustCompile(`^[0-9a-f]{2}(/[0-9a-f]{2}){0,7}$`)
)

// mount mounts one storage and returns how to undo it.
func (m *Manager) mount(ctx context.Context, s *agentpb.Storage) (func(context.Context) error, error) {
	mp := s.GetMountPoint()
	unmount := func(context.Context) error {
		err := m.cfg.Mounter.Unmount(mp, 0)
		if errors.Is(err, unix.EBUSY) {
			err = m.cfg.Mounter.Unmount(mp, unix.MNT_DETACH)
		}
		return err
	}
	switch s.GetDriver() {
	case "local":
		// A directory in the guest, nothing mounted.
		return func(context.Context) error { return nil }, nil
	case "ephemeral":
		if s.GetFstype() != "" && s.GetFstype() != "tmpfs" {
			return nil, fmt.Errorf("ephemeral storage of type %q: want tmpfs: %w", s.GetFstype(), errdefs.ErrInvalidArgument)
		}
		flags, data, err := parseOptions(s.GetOptions())
		if err != nil {
			return nil, err
		}
		if flags&unix.MS_BIND != 0 {
			return nil, fmt.Errorf("ephemeral storage cannot be a bind mount: %w", errdefs.ErrInvalidArgument)
		}
		return unmount, m.cfg.Mounter.Mount("tmpfs", mp, "tmpfs", flags|unix.MS_NODEV|unix.MS_NOSUID, strings.Join(data, ","))
	case "bind", "watchable-bind", "":
		if s.GetDriver() == "" && s.GetFstype() != "bind" {
			return nil, fmt.Errorf("storage without a driver: only fstype bind: %w", errdefs.ErrInvalidArgument)
		}
		src := s.GetSource()
		if err := m.checkPath("bind source", src); err != nil {
			return nil, err
		}
		if err := noSymlinks(src); err != nil {
			return nil, err
		}
		flags, data, err := parseOptions(s.GetOptions())
		if err != nil {
			return nil, err
		}
		if len(data) > 0 {
			return nil, fmt.Errorf("bind storage: filesystem options %q: %w", data, errdefs.ErrInvalidArgument)
		}
		if err := m.cfg.Mounter.Mount(src, mp, "", unix.MS_BIND|flags&unix.MS_REC, ""); err != nil {
			return nil, err
		}
		if rest := flags &^ (unix.MS_BIND | unix.MS_REC); rest != 0 {
			if err := m.cfg.Mounter.Mount("", mp, "", unix.MS_BIND|unix.MS_REMOUNT|rest, ""); err != nil {
				unmount(ctx)
				return nil, err
			}
		}
		return unmount, nil
	case "virtio-fs", "9p":
		tag := s.GetSource()
		if !tagRE.MatchString(tag) {
			return nil, fmt.Errorf("share tag %q: %w", tag, errdefs.ErrInvalidArgument)
		}
		fstype := "virtiofs"
		if s.GetDriver() == "9p" {
			fstype = "9p"
		}
		flags, data, err := parseOptions(s.GetOptions())
		if err != nil {
			return nil, err
		}
		if fstype == "9p" && !slices.ContainsFunc(data, func(o string) bool { return strings.HasPrefix(o, "trans=") }) {
			data = append(data, "trans=virtio")
		}
		return unmount, m.cfg.Mounter.Mount(tag, mp, fstype, flags&^(unix.MS_BIND|unix.MS_REC), strings.Join(data, ","))
	case "blk", "mmioblk":
		dev, err := m.blockDevice(s)
		if err != nil {
			return nil, err
		}
		if verity.IsLayer(s) {
			vs := proto.Clone(s).(*agentpb.Storage)
			vs.Source = dev
			l, err := verity.ParseLayer(vs)
			if err != nil {
				return nil, err
			}
			if err := l.Mount(ctx, m.log); err != nil {
				return nil, err
			}
			return l.Unmount, nil
		}
		fstype := s.GetFstype()
		if !slices.Contains([]string{"ext4", "xfs", "erofs", "squashfs", "btrfs", "vfat"}, fstype) {
			return nil, fmt.Errorf("block storage of type %q: %w", fstype, errdefs.ErrInvalidArgument)
		}
		flags, data, err := parseOptions(s.GetOptions())
		if err != nil {
			return nil, err
		}
		return unmount, m.cfg.Mounter.Mount(dev, mp, fstype, flags&^(unix.MS_BIND|unix.MS_REC)|unix.MS_NODEV, strings.Join(data, ","))
	case "overlayfs":
		flags, data, err := parseOptions(s.GetOptions())
		if err != nil {
			return nil, err
		}
		for _, d := range data {
			k, v, _ := strings.Cut(d, "=")
			switch k {
			case "lowerdir", "upperdir", "workdir":
				for _, dir := range strings.Split(v, ":") {
					if err := m.checkPath("overlay "+k, dir); err != nil {
						return nil, err
					}
					if err := noSymlinks(dir); err != nil {
						return nil, err
					}
				}
			case "index", "xino", "redirect_dir", "metacopy", "volatile", "userxattr":
			default:
				return nil, fmt.Errorf("overlay option %q not allowed: %w", d, errdefs.ErrInvalidArgument)
			}
		}
		return unmount, m.cfg.Mounter.Mount("overlay", mp, "overlay", flags&^(unix.MS_BIND|unix.MS_REC)|unix.MS_NODEV, strings.Join(data, ","))
	default:
		return nil, fmt.Errorf("storage driver %q is not supported: %w", s.GetDriver(), errdefs.ErrInvalidArgument)
	}
}

// Limits on a guest-pull storage.
const (
	maxImageRefLen  = 1024
	maxPullInfoJSON = 64 << 10
)

// guestPull pulls the storage's image (its source) into the mount point,
// which then is the container's rootfs. The driver options may carry the
// Kata runtime's image_guest_pull={"metadata":{...}} description, which is
// checked for shape and otherwise unused: what is pulled is the source,
// and the policy sees both.
func (m *Manager) guestPull(ctx context.Context, s *agentpb.Storage) (func(context.Context) error, error) {
	if m.cfg.Images == nil {
		return nil, fmt.Errorf("guest pull: this agent has no image service: %w", errdefs.ErrNotImplemented)
	}
	ref := s.GetSource()
	if ref == "" || len(ref) > maxImageRefLen || strings.ContainsFunc(ref, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return nil, fmt.Errorf("guest pull: image reference %q: want a non-empty reference without spaces or control characters, at most %d bytes: %w", ref, maxImageRefLen, errdefs.ErrInvalidArgument)
	}
	if ref == "pause" {
		return nil, fmt.Errorf("guest pull: the pause image is not part of this guest image: send the sandbox container's rootfs as a verity layer or share: %w", errdefs.ErrNotImplemented)
	}
	if f := s.GetFstype(); f != "" && f != "overlay" {
		return nil, fmt.Errorf("guest pull: fstype %q: want none or overlay: %w", f, errdefs.ErrInvalidArgument)
	}
	if _, _, err := parseOptions(s.GetOptions()); err != nil {
		return nil, err
	}
	for _, o := range s.GetDriverOptions() {
		k, v, _ := strings.Cut(o, "=")
		if k != GuestPullDriver {
			return nil, fmt.Errorf("guest pull: driver option %q: only %s=<json> is understood: %w", truncate(o, 64), GuestPullDriver, errdefs.ErrInvalidArgument)
		}
		if len(v) > maxPullInfoJSON {
			return nil, fmt.Errorf("guest pull: %s description of %d bytes, more than %d: %w", GuestPullDriver, len(v), maxPullInfoJSON, errdefs.ErrInvalidArgument)
		}
		var info struct {
			Metadata map[string]string `json:"metadata"`
		}
		dec := json.NewDecoder(strings.NewReader(v))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&info); err != nil || dec.More() {
			return nil, fmt.Errorf("guest pull: %s description is not {\"metadata\": {...}}: %w", GuestPullDriver, errdefs.ErrInvalidArgument)
		}
	}
	mp := s.GetMountPoint()
	if err := m.cfg.Images.PullImage(ctx, ref, mp); err != nil {
		return nil, fmt.Errorf("guest pull of %s: %w", ref, err)
	}
	return func(context.Context) error { return clearDir(mp) }, nil
}

// clearDir removes what is inside dir, leaving dir itself.
func clearDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// blockDevice finds the guest device of a blk or mmioblk storage:
// mmioblk names /dev/vdX; blk names a PCI path ("02/00": slot 2 of the
// root bus, then slot 0 behind that bridge), as the Kata runtime sends it,
// or /dev/vdX.
func (m *Manager) blockDevice(s *agentpb.Storage) (string, error) {
	src := s.GetSource()
	if virtioDisk.MatchString(src) {
		return filepath.Join(m.cfg.DevRoot, filepath.Base(src)), nil
	}
	if s.GetDriver() == "mmioblk" || !pciPathRE.MatchString(src) {
		return "", fmt.Errorf("block device %q: want /dev/vdX or a PCI path like 02/00: %w", src, errdefs.ErrInvalidArgument)
	}
	// Walk the PCI path from the root bus: each element is a slot on the
	// bus behind the previous device.
	dir := filepath.Join(m.cfg.SysfsRoot, "devices", "pci0000:00")
	bus := "0000:00"
	for _, slot := range strings.Split(src, "/") {
		dev := bus + ":" + slot + ".0"
		dir = filepath.Join(dir, dev)
		if _, err := os.Stat(dir); err != nil {
			return "", fmt.Errorf("block device %s: no PCI device %s: %w", src, dev, errdefs.ErrNotFound)
		}
		// The next bus, if a bridge follows.
		if ents, err := filepath.Glob(filepath.Join(dir, "pci_bus", "*")); err == nil && len(ents) == 1 {
			bus = filepath.Base(ents[0])
		}
	}
	blocks, _ := filepath.Glob(filepath.Join(dir, "virtio*", "block", "vd*"))
	if len(blocks) != 1 {
		return "", fmt.Errorf("block device %s: no single virtio disk under %s: %w", src, dir, errdefs.ErrNotFound)
	}
	return filepath.Join(m.cfg.DevRoot, filepath.Base(blocks[0])), nil
}
