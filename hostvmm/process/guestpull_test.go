package process

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/cocoon-containers/cocoon/agent/agenttest"
	"github.com/cocoon-containers/cocoon/hostvmm"
	"github.com/cocoon-containers/cocoon/hostvmm/vmtest"
	"github.com/cocoon-containers/cocoon/image/imagetest"
	"github.com/cocoon-containers/cocoon/kbs-client/kbstest"
	"github.com/cocoon-containers/cocoon/kbs-client/server"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

var (
	agentBinOnce sync.Once
	agentBin     string
	agentBinErr  error
	agentBinDir  string
)

// realAgent builds cocoon-agent once per package run.
func realAgent(t *testing.T) string {
	t.Helper()
	agentBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cocoon-process-agent-")
		if err != nil {
			agentBinErr = err
			return
		}
		agentBinDir = dir
		agentBin = filepath.Join(dir, "cocoon-agent")
		// With the simulated SNP provider, so that it can attest to the
		// reference KBS.
		out, err := exec.Command("go", "build", "-tags", "simulated", "-o", agentBin, "github.com/cocoon-containers/cocoon/agent/cmd/cocoon-agent").CombinedOutput()
		if err != nil {
			agentBinErr = fmt.Errorf("build cocoon-agent: %v\n%s", err, out)
		}
	})
	if agentBinErr != nil {
		t.Fatal(agentBinErr)
	}
	return agentBin
}

// TestGuestPullRealAgent: the real agent under the process launcher pulls
// a container's image itself (an image_guest_pull storage, as the Kata
// runtime sends it) from a registry on loopback, and the container runs
// from it with whiteouts and hard links right. A tampered layer is refused
// and leaves no rootfs; removing the container removes the pulled rootfs.
func TestGuestPullRealAgent(t *testing.T) {
	vmtest.RequireRoot(t)
	reg := imagetest.NewRegistry(t)
	imagetest.Push(t, reg.Ref("apps/check:1"), imagetest.AppImage(t))
	imagetest.PushTampered(t, reg, reg.Ref("apps/tampered:1"))
	p := startPullAgent(t, "pull-agent")
	agent := p.agent
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if out := p.run(ctx, t, "c1", reg.Ref("apps/check:1")); out != imagetest.AppOutput {
		t.Errorf("container output %q, want %q", out, imagetest.AppOutput)
	}
	_, err := agent.CreateContainer(ctx, pullRequest("c2", reg.Ref("apps/tampered:1"), "true"))
	if err == nil || !strings.Contains(err.Error(), "digest") {
		t.Fatalf("tampered layer: %v, want a digest mismatch", err)
	}

	if _, err := agent.RemoveContainer(ctx, &agentpb.RemoveContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	// The pull only goes into an empty directory: pulling to the same
	// rootfs again works only if removal emptied it. The layers come from
	// the cache this time.
	gets := reg.BlobGets.Load()
	if _, err := agent.CreateContainer(ctx, pullRequest("c1", reg.Ref("apps/check:1"), "sh", "-c", ":")); err != nil {
		t.Fatalf("CreateContainer again after removal: %v", err)
	}
	if n := reg.BlobGets.Load() - gets; n > 1 {
		t.Errorf("second pull fetched %d blobs; the layers should come from the cache", n)
	}
	if _, err := agent.RemoveContainer(ctx, &agentpb.RemoveContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	p.client.Close()
	if err := p.sb.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e, err := p.sb.Wait(ctx); err != nil || e.Reason != "exited with code 0" {
		t.Errorf("exit after stop: %v %v\n%s", e, err, p.log())
	}
	for _, bad := range []string{"level=ERROR", "panic"} {
		if strings.Contains(p.log(), bad) {
			t.Errorf("agent log shows %q:\n%s", bad, p.log())
		}
	}
	if err := p.sb.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir after cleanup: %v", err)
	}
}

// pullAgent is the real agent under the process launcher, with a sandbox
// created.
type pullAgent struct {
	sb     hostvmm.Sandbox
	client *ttrpc.Client
	agent  agentpb.AgentServiceService
	state  string
}

// log is the agent's log so far.
func (p *pullAgent) log() string { b, _ := os.ReadFile(p.sb.ConsoleLog()); return string(b) }

// startPullAgent starts the real agent with env (and a test cgroup).
func startPullAgent(t *testing.T, id string, env ...string) *pullAgent {
	t.Helper()
	dir := t.TempDir()
	cgroup := fmt.Sprintf("/cocoon-hostvmm-%s-%d", id, os.Getpid())
	t.Cleanup(func() { removeCgroup(t, cgroup) })
	conf := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("cgroup_parent = %q\nlog_level = \"debug\"\n", cgroup)), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &pullAgent{state: filepath.Join(shortTempDir(t), "state")}
	l := &Launcher{StopTimeout: time.Minute, Env: append([]string{"COCOON_AGENT_CONFIG=" + conf}, env...)}
	sb, err := l.Start(context.Background(), hostvmm.Config{ID: id, StateDir: p.state, AgentBinary: realAgent(t)})
	if err != nil {
		t.Fatal(err)
	}
	p.sb = sb
	t.Cleanup(func() { sb.Cleanup() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := sb.DialAgent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p.client = ttrpc.NewClient(conn)
	t.Cleanup(func() { p.client.Close() })
	p.agent = agentpb.NewAgentServiceClient(p.client)
	if _, err := p.agent.CreateSandbox(ctx, &agentpb.CreateSandboxRequest{Hostname: "pod", SandboxId: id}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	return p
}

// pullRequest creates container cid running args from image, which the
// agent pulls (the storage as the Kata runtime shapes it).
func pullRequest(cid, image string, args ...string) *agentpb.CreateContainerRequest {
	root := "/run/kata-containers/" + cid + "/rootfs"
	return &agentpb.CreateContainerRequest{ContainerId: cid, ExecId: cid, OCI: agenttest.Spec(root, args...),
		Storages: []*agentpb.Storage{{Driver: "image_guest_pull", Source: image, Fstype: "overlay", MountPoint: root,
			DriverOptions: []string{`image_guest_pull={"metadata":{"io.kubernetes.cri.image-name":"` + image + `"}}`}}}}
}

// run runs imagetest.AppScript in container cid pulled from image, waits
// for a zero exit and returns its output.
func (p *pullAgent) run(ctx context.Context, t *testing.T, cid, image string) string {
	t.Helper()
	if _, err := p.agent.CreateContainer(ctx, pullRequest(cid, image, "sh", "-c", imagetest.AppScript)); err != nil {
		t.Fatalf("CreateContainer from %s: %v\nagent log:\n%s", image, err, p.log())
	}
	if _, err := p.agent.StartContainer(ctx, &agentpb.StartContainerRequest{ContainerId: cid}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	out := readStdout(ctx, t, p.agent, cid)
	if w, err := p.agent.WaitProcess(ctx, &agentpb.WaitProcessRequest{ContainerId: cid, ExecId: cid}); err != nil || w.Status != 0 {
		t.Fatalf("WaitProcess: %v %v", w, err)
	}
	return out
}

// TestEncryptedImageRealAgent: an image whose layers skopeo encrypted, the
// layer keys wrapped for the attestation-agent key provider under a key
// only the reference KBS holds, runs in a container once the agent (with
// simulated SNP evidence) has attested and fetched that key; the image
// signature policy, from the KBS too, refuses a repository it rejects. A
// guest whose evidence the KBS does not accept gets no key, and one that
// cannot attest at all is told where keys come from; neither leaves a
// rootfs. The key never reaches the agent's log.
func TestEncryptedImageRealAgent(t *testing.T) {
	vmtest.RequireRoot(t)
	reg := imagetest.NewRegistry(t)
	imagetest.Push(t, reg.Ref("apps/check:plain"), imagetest.AppImage(t))
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	const kid = "kbs:///default/image-key/1"
	imagetest.EncryptForKBS(t, reg, reg.Ref("apps/check:plain"), reg.Ref("apps/check:enc"), kid, key)
	imagetest.Push(t, reg.Ref("blocked/app:1"), imagetest.AppImage(t))

	k := kbstest.Start(t, server.Config{})
	for p, b := range map[string][]byte{
		"default/image-key/1": key,
		"default/security-policy/test": []byte(`{"default": [{"type": "insecureAcceptAnything"}],
			"transports": {"docker": {"` + reg.Host + `/blocked": [{"type": "reject"}]}}}`),
	} {
		f := filepath.Join(k.Repo, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(f), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	h, m := kbstest.HostData(), kbstest.Measurement()
	attesting := func(hostData [32]byte) []string {
		return []string{"COCOON_ATTESTATION=simulated", "COCOON_KBS_URL=" + k.Srv.URL,
			"COCOON_SIM_HOST_DATA=" + hex.EncodeToString(hostData[:]), "COCOON_SIM_MEASUREMENT=" + hex.EncodeToString(m[:]),
			"COCOON_IMAGE_POLICY=kbs:///default/security-policy/test",
			// The host's network is shared: no workload endpoint on it.
			"COCOON_ENDPOINT_ADDR=off"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p := startPullAgent(t, "enc-ok", attesting(h)...)
	if out := p.run(ctx, t, "c1", reg.Ref("apps/check:enc")); out != imagetest.AppOutput {
		t.Errorf("encrypted image's container printed %q, want %q", out, imagetest.AppOutput)
	}
	agent := p.agent
	_, err := agent.CreateContainer(ctx, pullRequest("c2", reg.Ref("blocked/app:1"), "true"))
	if err == nil || !strings.Contains(err.Error(), "denied by signature policy") {
		t.Errorf("image the policy rejects: %v", err)
	}
	if _, err := agent.RemoveContainer(ctx, &agentpb.RemoveContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}

	var other [32]byte
	other[0] = 0xff
	denied := startPullAgent(t, "enc-denied", attesting(other)...)
	_, err = denied.agent.CreateContainer(ctx, pullRequest("c3", reg.Ref("apps/check:enc"), "true"))
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("guest the KBS does not accept: %v, want the KBS's refusal", err)
	}

	plain := startPullAgent(t, "enc-none", "COCOON_ENDPOINT_ADDR=off")
	_, err = plain.agent.CreateContainer(ctx, pullRequest("c4", reg.Ref("apps/check:enc"), "true"))
	if err == nil || !strings.Contains(err.Error(), "come from the KBS after attestation") {
		t.Errorf("guest without attestation: %v", err)
	}

	for _, log := range []string{p.log(), denied.log()} {
		for _, secret := range []string{hex.EncodeToString(key), base64.StdEncoding.EncodeToString(key), string(key)} {
			if strings.Contains(log, secret) {
				t.Fatalf("agent log holds the image key:\n%s", log)
			}
		}
		for _, s := range k.Sensitive() {
			if s != "" && strings.Contains(log, s) {
				t.Fatalf("agent log holds %q from the KBS exchange", s)
			}
		}
	}
}
