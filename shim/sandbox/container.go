package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"google.golang.org/protobuf/proto"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cocoon-containers/cocoon/agent/verity"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/shim/config"
	grpcerr "github.com/containerd/containerd/errdefs"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// maxCopyFileSize bounds a file sent by CopyFile (hostname, hosts, ...).
const maxCopyFileSize = 1 << 20

// ContainerRequest prepares container id for the guest and returns the
// CreateContainer request: rootfs and bind-mount sources are made visible in
// the guest (shared directory, CopyFile, or host paths for the process
// launcher) and the spec is constrained the way the Kata runtime does.
// rootfs is the container's mounted rootfs on the host.
func (s *Sandbox) ContainerRequest(ctx context.Context, id, rootfs string, spec *specs.Spec) (_ *agentpb.CreateContainerRequest, retErr error) {
	if err := ValidID(id); err != nil {
		return nil, fmt.Errorf("container request: %w", err)
	}
	if spec == nil || spec.Process == nil || spec.Root == nil {
		return nil, fmt.Errorf("container %s: spec without process or root: %w", id, errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(rootfs) {
		return nil, fmt.Errorf("container %s: rootfs %q is not absolute: %w", id, rootfs, errdefs.ErrInvalidArgument)
	}
	defer func() {
		if retErr != nil {
			s.mu.Lock()
			_ = s.unshareLocked(id)
			s.mu.Unlock()
		}
	}()
	ospec := toAgentSpec(spec)
	constrainSpec(ospec)
	if guestPulled(s.cfg, spec.Annotations) {
		return s.guestPullRequest(ctx, id, ospec, spec.Annotations)
	}
	if s.sharedDir == "" {
		return s.layerRequest(ctx, id, ospec)
	}
	dst := filepath.Join(s.sharedDir, id, "rootfs")
	if !s.isShared(id, dst) {
		if err := s.bindShare(id, rootfs, dst, false); err != nil {
			return nil, fmt.Errorf("container %s: share rootfs: %w", id, err)
		}
	}
	ospec.Root.Path = path.Join(s.guestShared(), id, "rootfs")
	mounts, err := s.shareMounts(ctx, id, ospec.Mounts)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	ospec.Mounts = mounts
	return &agentpb.CreateContainerRequest{
		ContainerId: id,
		ExecId:      id,
		OCI:         ospec,
	}, nil
}

// constrainSpec removes what the guest must not get from the host, as the
// Kata runtime does: hooks run on the host side, namespace paths name host
// objects, the network namespace is the guest's own, and host cpusets and
// device cgroup rules do not apply inside the VM.
func constrainSpec(s *agentpb.Spec) {
	s.Hooks = nil
	if s.Linux == nil {
		return
	}
	var ns []*agentpb.LinuxNamespace
	for _, n := range s.Linux.Namespaces {
		if n.Type == string(specs.NetworkNamespace) {
			continue
		}
		ns = append(ns, &agentpb.LinuxNamespace{Type: n.Type})
	}
	s.Linux.Namespaces = ns
	s.Linux.IntelRdt = nil
	if r := s.Linux.Resources; r != nil {
		r.Devices = nil
		r.BlockIO = nil
		r.HugepageLimits = nil
		r.Network = nil
		if r.CPU != nil {
			r.CPU.Cpus = ""
			r.CPU.Mems = ""
		}
	}
}

// shareMounts makes host bind-mount sources visible in the guest. Files are
// copied into the shared directory (or sent with CopyFile when none is
// shared) under "<container>-<random>-<name>"; directories are bind-mounted
// into the shared directory. The sandbox's /dev/shm becomes the guest shm.
func (s *Sandbox) shareMounts(ctx context.Context, id string, in []*agentpb.Mount) ([]*agentpb.Mount, error) {
	var out []*agentpb.Mount
	for _, m := range in {
		if !isBind(m) {
			out = append(out, m)
			continue
		}
		if m.Destination == "/dev/shm" {
			out = append(out, &agentpb.Mount{Destination: m.Destination, Source: GuestShmDir, Type: "bind", Options: []string{"rbind"}})
			continue
		}
		fi, err := os.Stat(m.Source)
		if err != nil {
			return nil, fmt.Errorf("bind mount source %s: %w", m.Source, err)
		}
		var rnd [8]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, err
		}
		name := fmt.Sprintf("%s-%s-%s", id, hex.EncodeToString(rnd[:]), filepath.Base(m.Source))
		guest := path.Join(s.guestShared(), name)
		switch {
		case s.sharedDir != "" && fi.IsDir():
			if err := s.bindShare(id, m.Source, filepath.Join(s.sharedDir, name), hasOpt(m.Options, "ro")); err != nil {
				return nil, fmt.Errorf("share %s: %w", m.Source, err)
			}
		case s.sharedDir != "" && fi.Mode().IsRegular():
			if err := s.copyShare(id, m.Source, filepath.Join(s.sharedDir, name)); err != nil {
				return nil, fmt.Errorf("share %s: %w", m.Source, err)
			}
		case fi.Mode().IsRegular():
			if err := s.copyFile(ctx, m.Source, guest, fi); err != nil {
				return nil, fmt.Errorf("copy %s into the guest: %w", m.Source, err)
			}
		default:
			s.log.Warn("bind mount not shared with a sandbox without a shared directory", "container_id", id, "destination", m.Destination)
			continue
		}
		nm := proto.Clone(m).(*agentpb.Mount)
		nm.Source = guest
		out = append(out, nm)
	}
	return out, nil
}

func isBind(m *agentpb.Mount) bool {
	return m.Type == "bind" || hasOpt(m.Options, "bind") || hasOpt(m.Options, "rbind")
}

func hasOpt(opts []string, o string) bool {
	for _, x := range opts {
		if x == o {
			return true
		}
	}
	return false
}

// isShared reports whether dst was already shared for container id.
func (s *Sandbox) isShared(id, dst string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.shares[id] {
		if p == dst {
			return true
		}
	}
	return false
}

// bindShare bind-mounts src at dst inside the shared directory.
func (s *Sandbox) bindShare(id, src, dst string, ro bool) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	s.mu.Lock()
	s.shares[id] = append(s.shares[id], dst)
	s.mu.Unlock()
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s: %w", dst, err)
	}
	if ro {
		if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("remount %s read-only: %w", dst, err)
		}
	}
	return nil
}

// copyShare copies a small file into the shared directory.
func (s *Sandbox) copyShare(id, src, dst string) error {
	data, fi, err := readSmall(src)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.shares[id] = append(s.shares[id], dst)
	s.mu.Unlock()
	return os.WriteFile(dst, data, fi.Mode().Perm())
}

// copyFile sends a small file to the guest with CopyFile.
func (s *Sandbox) copyFile(ctx context.Context, src, guest string, fi os.FileInfo) error {
	data, _, err := readSmall(src)
	if err != nil {
		return err
	}
	st, _ := fi.Sys().(*unix.Stat_t)
	req := &agentpb.CopyFileRequest{
		Path:     guest,
		FileSize: int64(len(data)),
		FileMode: uint32(fi.Mode().Perm()) | unix.S_IFREG,
		DirMode:  0o755 | unix.S_IFDIR,
		Data:     data,
	}
	if st != nil {
		req.Uid = int32(st.Uid)
		req.Gid = int32(st.Gid)
	}
	if _, err := s.agent.CopyFile(ctx, req); err != nil {
		return grpcerr.FromGRPC(err)
	}
	return nil
}

func readSmall(src string) ([]byte, os.FileInfo, error) {
	f, err := os.Open(src)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxCopyFileSize {
		return nil, nil, fmt.Errorf("%s: want a regular file of at most %d bytes: %w", src, maxCopyFileSize, errdefs.ErrInvalidArgument)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxCopyFileSize+1))
	if err != nil {
		return nil, nil, err
	}
	return data, fi, nil
}

// RemoveContainer undoes what ContainerRequest shared for container id.
func (s *Sandbox) RemoveContainer(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unshareLocked(id)
}

func (s *Sandbox) unshareLocked(id string) error {
	paths := s.shares[id]
	delete(s.shares, id)
	var errs []error
	for i := len(paths) - 1; i >= 0; i-- {
		p := paths[i]
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	if s.sharedDir != "" {
		// The per-container directory that held the rootfs mount point.
		dir := filepath.Join(s.sharedDir, id)
		if strings.HasPrefix(dir, s.sharedDir+string(filepath.Separator)) {
			_ = os.Remove(dir)
		}
	}
	return errors.Join(errs...)
}

// CRI annotations a guest pull reads.
const (
	annImageName     = "io.kubernetes.cri.image-name"
	annContainerName = "io.kubernetes.cri.container-name"
	annContainerType = "io.kubernetes.cri.container-type"
	maxImageRefLen   = 1024
)

// guestPulled tells whether a container with these annotations gets its
// image from a pull in the guest.
func guestPulled(cfg config.Config, ann map[string]string) bool {
	return cfg.Sandbox.ImagePull == config.ImagePullGuest && ann[annImageName] != ""
}

// GuestPullRoot is where the guest pulls a container's image, as in the
// Kata agent.
func GuestPullRoot(id string) string { return path.Join("/run/kata-containers", id, "rootfs") }

// guestPullRequest is the CreateContainer request of a container whose
// image the agent pulls: one image_guest_pull storage naming the image
// (the Kata runtime's shape), the rootfs where the agent unpacks it. The
// host's copy of the image is not used.
func (s *Sandbox) guestPullRequest(ctx context.Context, id string, ospec *agentpb.Spec, ann map[string]string) (*agentpb.CreateContainerRequest, error) {
	ref := ann[annImageName]
	if len(ref) > maxImageRefLen || strings.ContainsFunc(ref, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return nil, fmt.Errorf("container %s: image name %q: %w", id, ref, errdefs.ErrInvalidArgument)
	}
	meta := map[string]string{annImageName: ref}
	for _, k := range []string{annContainerName, annContainerType} {
		if v := ann[k]; v != "" {
			meta[k] = v
		}
	}
	info, err := json.Marshal(map[string]any{"metadata": meta})
	if err != nil {
		return nil, err
	}
	root := GuestPullRoot(id)
	ospec.Root.Path = root
	mounts, err := s.shareMounts(ctx, id, ospec.Mounts)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	ospec.Mounts = mounts
	return &agentpb.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: ospec, Storages: []*agentpb.Storage{{
		Driver: "image_guest_pull", Source: ref, Fstype: "overlay", MountPoint: root,
		DriverOptions: []string{"image_guest_pull=" + string(info)},
	}}}, nil
}

// layerRequest is the CreateContainer request of a sandbox that shares
// nothing with the guest. The rootfs is the container's verity layer
// (attached at launch, its root hash in the storage options for the policy
// to check), mounted read-only and made writable with an overlay whose
// upper directory is a tmpfs in the guest; small bind-mounted files travel
// by CopyFile.
func (s *Sandbox) layerRequest(ctx context.Context, id string, ospec *agentpb.Spec) (*agentpb.CreateContainerRequest, error) {
	s.mu.Lock()
	ls := s.layers[id]
	s.mu.Unlock()
	if len(ls) == 0 {
		return nil, fmt.Errorf("container %s: a sandbox without a shared directory carries only the rootfs it was started with (no disk hotplug yet): %w", id, errdefs.ErrNotImplemented)
	}
	// One read-only verity mount per layer, bottom first, stacked by an
	// overlay (whose lowerdir lists the top first) over a guest tmpfs.
	base := path.Join(GuestLayersDir, id)
	rw := base + "-rw"
	root := path.Join(GuestSharedDir, id, "rootfs")
	var storages []*agentpb.Storage
	lowers := make([]string, len(ls))
	for i, l := range ls {
		mp := base
		if len(ls) > 1 {
			mp = base + "/" + strconv.Itoa(i)
		}
		lowers[len(ls)-1-i] = mp
		storages = append(storages, &agentpb.Storage{Driver: "mmioblk", Source: l.device, Fstype: l.image.FSType, MountPoint: mp,
			Options: []string{"ro",
				verity.OptRootHash + hex.EncodeToString(l.image.RootHash),
				verity.OptDataBlocks + strconv.FormatUint(l.image.DataBlocks, 10)}})
	}
	storages = append(storages,
		&agentpb.Storage{Driver: "ephemeral", Source: "tmpfs", Fstype: "tmpfs", MountPoint: rw, Options: []string{"mode=0755"}},
		&agentpb.Storage{Driver: "local", MountPoint: rw + "/upper"},
		&agentpb.Storage{Driver: "local", MountPoint: rw + "/work"},
		&agentpb.Storage{Driver: "overlayfs", Source: "overlay", Fstype: "overlay", MountPoint: root,
			Options: []string{"lowerdir=" + strings.Join(lowers, ":"), "upperdir=" + rw + "/upper", "workdir=" + rw + "/work"}},
	)
	ospec.Root.Path = root
	mounts, err := s.shareMounts(ctx, id, ospec.Mounts)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	ospec.Mounts = mounts
	return &agentpb.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: ospec, Storages: storages}, nil
}
