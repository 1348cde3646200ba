package qemu

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-containers/cocoon/agent/agenttest"
	"github.com/cocoon-containers/cocoon/hostvmm"
	"github.com/cocoon-containers/cocoon/hostvmm/vmtest"
	"github.com/cocoon-containers/cocoon/image/imagetest"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/rpc/typespb"
)

// TestGuestPullInVM: the agent, PID 1 of a TCG guest that shares no
// directory with the host, pulls a container's image over the guest's
// restricted network from a registry on the host's loopback (reachable
// only at the service address the launcher forwards), and the container
// runs from it. A layer whose bytes do not match its digest is refused.
func TestGuestPullInVM(t *testing.T) {
	vmtest.RequireRoot(t)
	img := agentImage(t)
	reg := imagetest.NewRegistry(t)
	imagetest.Push(t, reg.Ref("apps/check:1"), imagetest.AppImage(t))
	imagetest.PushTampered(t, reg, reg.Ref("apps/tampered:1"))

	const guestPort = 5000
	guestRegistry := hostvmm.ServiceIP + ":5000"
	state := filepath.Join(shortTempDir(t), "state")
	sb, c := startAgentVM(t, hostvmm.Config{
		ID: "pull-vm", StateDir: state, Kernel: img.Kernel, Initrd: img.Initrd,
		Cmdline: "console=ttyS0 quiet panic=-1 agent.log=debug cocoon.image_insecure_registries=" + guestRegistry,
		Network: &hostvmm.Network{Forwards: []hostvmm.Forward{{GuestPort: guestPort, HostAddr: reg.Host}}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	agent := agentpb.NewAgentServiceClient(c)
	if _, err := agent.CreateSandbox(ctx, &agentpb.CreateSandboxRequest{Hostname: "pullpod", SandboxId: "sb1"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	addr, bits, _ := strings.Cut(hostvmm.GuestCIDR, "/")
	if _, err := agent.UpdateInterface(ctx, &agentpb.UpdateInterfaceRequest{Interface: &typespb.Interface{
		Name: "eth0", HwAddr: hostvmm.GuestMAC, Mtu: 1500,
		IPAddresses: []*typespb.IPAddress{{Family: typespb.IPFamily_v4, Address: addr, Mask: bits}},
	}}); err != nil {
		t.Fatalf("UpdateInterface: %v", err)
	}
	if _, err := agent.UpdateRoutes(ctx, &agentpb.UpdateRoutesRequest{Routes: &agentpb.Routes{Routes: []*typespb.Route{
		{Dest: "default", Gateway: hostvmm.GatewayIP, Device: "eth0", Family: typespb.IPFamily_v4},
	}}}); err != nil {
		t.Fatalf("UpdateRoutes: %v", err)
	}

	pull := func(cid, image string) *agentpb.Storage {
		return &agentpb.Storage{Driver: "image_guest_pull", Source: image, Fstype: "overlay",
			DriverOptions: []string{`image_guest_pull={"metadata":{}}`},
			MountPoint:    "/run/kata-containers/" + cid + "/rootfs"}
	}
	spec := agenttest.Spec("/run/kata-containers/c1/rootfs", "sh", "-c", imagetest.AppScript)
	if _, err := agent.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: "c1", ExecId: "c1", OCI: spec,
		Storages: []*agentpb.Storage{pull("c1", guestRegistry+"/apps/check:1")}}); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := agent.StartContainer(ctx, &agentpb.StartContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	if out := readAll(ctx, t, agent, "c1", "c1"); out != imagetest.AppOutput {
		t.Errorf("container output %q, want %q", out, imagetest.AppOutput)
	}
	if w, err := agent.WaitProcess(ctx, &agentpb.WaitProcessRequest{ContainerId: "c1", ExecId: "c1"}); err != nil || w.Status != 0 {
		t.Fatalf("WaitProcess: %v %v", w, err)
	}

	spec2 := agenttest.Spec("/run/kata-containers/c2/rootfs", "true")
	_, err := agent.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: "c2", ExecId: "c2", OCI: spec2,
		Storages: []*agentpb.Storage{pull("c2", guestRegistry+"/apps/tampered:1")}})
	if err == nil || !strings.Contains(err.Error(), "digest") {
		t.Fatalf("tampered layer: %v, want a digest mismatch", err)
	}

	if _, err := agent.RemoveContainer(ctx, &agentpb.RemoveContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	if _, err := agent.DestroySandbox(ctx, &agentpb.DestroySandboxRequest{}); err != nil {
		t.Fatalf("DestroySandbox: %v", err)
	}
	waitExit(t, sb)
	console := readFile(sb.ConsoleLog())
	if !strings.Contains(console, "image pulled") {
		t.Errorf("console does not log the pull:\n%s", console)
	}
	for _, bad := range []string{"Kernel panic", "panic:"} {
		if strings.Contains(console, bad) {
			t.Errorf("console shows %q:\n%s", bad, console)
		}
	}
	assertGone(t, sb, state)
}
