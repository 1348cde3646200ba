package server_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cocoon-containers/cocoon/agent/agenttest"
	"github.com/cocoon-containers/cocoon/agent/server"
	"github.com/cocoon-containers/cocoon/agent/storage"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// TestContainerRootfsFromStorage: the container's rootfs is a bind storage
// of its CreateContainer request, as the Kata runtime sends it; it is
// mounted before the container is created and unmounted by
// RemoveContainer, and a sandbox tmpfs storage goes with DestroySandbox.
func TestContainerRootfsFromStorage(t *testing.T) {
	agenttest.RequireRoot(t)
	base := t.TempDir()
	guest := filepath.Join(base, "guest")
	mgr := storage.NewManager(storage.Config{AllowedRoots: []string{base}})
	h := newHarness(t, func(o *server.Options) { o.Storage = mgr })
	shm := filepath.Join(guest, "sandbox", "shm")
	if _, err := h.agent.CreateSandbox(h.ctx(), &agentpb.CreateSandboxRequest{SandboxId: "sb", Storages: []*agentpb.Storage{
		{Driver: "ephemeral", Source: "shm", Fstype: "tmpfs", Options: []string{"size=1m"}, MountPoint: shm},
	}}); err != nil {
		t.Fatal(err)
	}
	hostRoot := agenttest.BusyboxRootfs(t, filepath.Join(base, "host"), "c1")
	guestRoot := filepath.Join(guest, "containers", "c1", "rootfs")
	spec := agenttest.Spec(guestRoot, "cat", "/marker")
	if err := os.WriteFile(filepath.Join(hostRoot, "marker"), []byte("through the storage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := h.agent.CreateContainer(h.ctx(), &agentpb.CreateContainerRequest{ContainerId: "c1", ExecId: "c1", OCI: spec,
		Storages: []*agentpb.Storage{{Driver: "bind", Source: hostRoot, MountPoint: guestRoot}}}); err != nil {
		t.Fatal(err)
	}
	h.start("c1")
	if got := h.readAll("c1", "c1", false); got != "through the storage\n" {
		t.Errorf("stdout %q", got)
	}
	h.wait("c1", "c1")
	h.remove("c1")
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), guestRoot) {
		t.Error("the container's rootfs storage is still mounted after RemoveContainer")
	}
	var st unix.Statfs_t
	if err := unix.Statfs(shm, &st); err != nil || st.Type != unix.TMPFS_MAGIC || len(mgr.MountPoints("")) != 1 {
		t.Errorf("the sandbox storage went with the container: statfs %#x %v, tracked %v; mounts under the test dir:\n%s",
			st.Type, err, mgr.MountPoints(""), linesWith(string(mounts), base))
	}
	if _, err := h.agent.DestroySandbox(h.ctx(), &agentpb.DestroySandboxRequest{}); err != nil {
		t.Fatal(err)
	}
	mounts, _ = os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), guest) {
		t.Errorf("storages left after DestroySandbox")
	}
}

func linesWith(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
