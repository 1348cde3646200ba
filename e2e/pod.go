// Package e2e runs the main job end to end: a confidential pod in a QEMU
// guest (simulated SNP) whose policy the SNP report binds, whose image
// reaches the guest integrity-protected (a dm-verity image whose root hash
// is on the measured command line), and whose workload gets a secret from
// the reference KBS through the in-guest workload endpoint.
//
// The pod is driven over the agent API in the order and shape the shim
// uses (Health, SetPolicy, network, CreateSandbox, containers).
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/cocoon-containers/cocoon/agent/agenttest"
	"github.com/cocoon-containers/cocoon/hostvmm"
	"github.com/cocoon-containers/cocoon/hostvmm/qemu"
	"github.com/cocoon-containers/cocoon/hostvmm/vmtest"
	"github.com/cocoon-containers/cocoon/kbs-client/server"
	"github.com/cocoon-containers/cocoon/rootfs"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/rpc/typespb"
)

// Secret is what the KBS holds for the pod at default/key/1.
const Secret = "cocoon-demo-secret-4c6f"

// kbsGuestPort is where the guest reaches the KBS (hostvmm.ServiceIP).
const kbsGuestPort = 8080

// WorkloadCommand is the pod's container: it asks the workload endpoint
// for its secret and prints it, or prints why it got none.
const WorkloadCommand = `wget -q -O - http://127.0.0.1:8006/cdh/resource/default/key/1 2>&1 || true`

// Policy is the pod owner's agent policy: everything the pod needs, the
// container only from the verified image, and no exec.
const Policy = `package agent_policy

import rego.v1

default AllowRequestsFailingPolicy := false

default SetPolicyRequest := true
default UpdateInterfaceRequest := true
default UpdateRoutesRequest := true
default CreateSandboxRequest := true
default DestroySandboxRequest := true
default StartContainerRequest := true
default RemoveContainerRequest := true
default WaitProcessRequest := true
default ReadStreamRequest := true
default SignalProcessRequest := true
default GetOOMEventRequest := true
default GuestDetailsRequest := true
default ExecProcessRequest := false

default CreateContainerRequest := false

CreateContainerRequest if {
	input.OCI.Root.Path == "/run/cocoon-rootfs"
	input.OCI.Root.Readonly
}
`

// Options configure an Env.
type Options struct {
	// AgentBinary is the static cocoon-agent for the guest.
	AgentBinary string
	// Dir holds the images and logs; it must exist.
	Dir string
	// Logger receives launcher and KBS logs (default: discarded).
	Logger *slog.Logger
}

// Env is the prepared guest image and a running reference KBS.
type Env struct {
	opts     Options
	Manifest *rootfs.Manifest
	kernel   string
	initrd   string
	image    string
	hashFile string
	cmdline  string

	kbsSrv  *http.Server
	kbsAddr string
	// KBSLogs holds everything the KBS logged.
	KBSLogs *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// HostData is the HOST_DATA a policy binds: its SHA-256.
func HostData(policy string) [32]byte { return sha256.Sum256([]byte(policy)) }

// Prepare builds the guest image (the agent's initrd with the
// allow-only-SetPolicy default policy, and the workload's busybox tree as
// a dm-verity image) and starts the KBS on loopback with the secret and a
// resource policy that requires the MEASUREMENT the manifest predicts and
// the HOST_DATA of Policy.
func Prepare(ctx context.Context, opts Options) (*Env, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	e := &Env{opts: opts, KBSLogs: &syncBuffer{}}
	tree := filepath.Join(opts.Dir, "workload")
	if err := agenttest.MakeBusyboxRootfs(tree); err != nil {
		return nil, err
	}
	// The command line names what the QEMU launcher would otherwise add,
	// so that the manifest predicts the launcher's measurement.
	e.cmdline = strings.Join([]string{"console=ttyS0", "quiet", "panic=-1",
		"agent.server_addr=serial://" + hostvmm.AgentChannel,
		"tsc_early_khz=" + strconv.Itoa(qemu.TSCKHz()),
		"cocoon.kbs_url=http://" + hostvmm.ServiceIP + ":" + strconv.Itoa(kbsGuestPort),
	}, " ")
	out := filepath.Join(opts.Dir, "guest")
	m, err := rootfs.Build(ctx, &rootfs.Config{
		Agent: opts.AgentBinary, Kernel: "linux-image-amd64", KernelCache: vmtest.KernelCache,
		DefaultPolicy: "allow-only-setpolicy", Cmdline: e.cmdline,
		Verity: &rootfs.VerityConfig{Source: tree},
	}, out, nil)
	if err != nil {
		return nil, fmt.Errorf("build the guest image: %w", err)
	}
	e.Manifest = m
	e.kernel = filepath.Join(out, rootfs.KernelFile)
	e.initrd = filepath.Join(out, rootfs.InitrdFile)
	e.image = filepath.Join(out, rootfs.VerityImageFile)
	e.hashFile = filepath.Join(out, rootfs.VerityHashFile)
	if err := e.startKBS(ctx); err != nil {
		return nil, err
	}
	return e, nil
}

// ResourcePolicy is the KBS's rule for default/key/1.
func (e *Env) ResourcePolicy() string {
	return resourcePolicy(e.Manifest.ReferenceValues.SimulatedMeasurement, HostData(Policy))
}

func (e *Env) startKBS(ctx context.Context) error {
	srv, addr, err := startKBS(ctx, filepath.Join(e.opts.Dir, "kbs-repository"), e.ResourcePolicy(), e.KBSLogs)
	if err != nil {
		return err
	}
	e.kbsSrv, e.kbsAddr = srv, addr
	return nil
}

// resourcePolicy releases resources only to a guest with the measurement
// and HOST_DATA given, not debuggable.
func resourcePolicy(measurement string, hostData [32]byte) string {
	return `package policy
import rego.v1
default allow := false
allow if {
	input.claims.measurement == "` + measurement + `"
	input.claims.host_data == "` + hex.EncodeToString(hostData[:]) + `"
	not input.claims.policy.debug
}
`
}

// startKBS serves the reference KBS on a loopback port, with Secret at
// default/key/1 in repo, the resource policy given, and its log in logs.
func startKBS(ctx context.Context, repo, policy string, logs io.Writer) (*http.Server, string, error) {
	if err := os.MkdirAll(filepath.Join(repo, "default", "key"), 0o700); err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(filepath.Join(repo, "default", "key", "1"), []byte(Secret), 0o600); err != nil {
		return nil, "", err
	}
	srv, err := server.New(ctx, server.Config{
		Repository: repo, ResourcePolicy: policy, TrustSimulated: true,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		return nil, "", fmt.Errorf("reference KBS: %w", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(l)
	return hs, l.Addr().String(), nil
}

// KBSAddr is the KBS's loopback address on the host.
func (e *Env) KBSAddr() string { return e.kbsAddr }

// StopKBS stops the KBS (to show what a workload sees when it is down).
func (e *Env) StopKBS() {
	if e.kbsSrv != nil {
		e.kbsSrv.Close()
	}
}

// Close stops the KBS.
func (e *Env) Close() { e.StopKBS() }

// Pod is a running confidential pod.
type Pod struct {
	// PolicyErr is the agent's answer to SetPolicy (nil: accepted; the
	// pod then also has its network and sandbox).
	PolicyErr error

	env     *Env
	sb      hostvmm.Sandbox
	state   string
	conn    *ttrpc.Client
	Agent   agentpb.AgentServiceService
	nextCID int
}

// StartPod launches a guest whose HOST_DATA binds policy and brings the
// pod up the way the shim does: Health, SetPolicy, the network,
// CreateSandbox. A refused SetPolicy is not an error here: it is in
// p.PolicyErr, and the pod runs under the image's default policy.
func (e *Env) StartPod(ctx context.Context, id, policy string) (*Pod, error) {
	state := filepath.Join(e.opts.Dir, "pods", id)
	l := &qemu.Launcher{QuitTimeout: time.Minute, Logger: e.opts.Logger} // KVM when usable, TCG otherwise
	sb, err := l.Start(ctx, hostvmm.Config{
		ID: id, StateDir: state, Kernel: e.kernel, Initrd: e.initrd,
		Image: e.image, VerityCmdline: e.Manifest.VerityCmdline, Cmdline: e.cmdline,
		Disks:        []hostvmm.Disk{{Path: e.hashFile, ReadOnly: true}},
		Confidential: hostvmm.ConfidentialSimulated, HostData: HostData(policy),
		Network:   &hostvmm.Network{Forwards: []hostvmm.Forward{{GuestPort: kbsGuestPort, HostAddr: e.kbsAddr}}},
		MemoryMiB: 512,
	})
	if err != nil {
		return nil, err
	}
	p := &Pod{env: e, sb: sb, state: state}
	ok := false
	defer func() {
		if !ok {
			p.Close()
		}
	}()
	conn, err := sb.DialAgent(ctx)
	if err != nil {
		return nil, fmt.Errorf("dial agent: %w", err)
	}
	p.conn = ttrpc.NewClient(conn)
	p.Agent = agentpb.NewAgentServiceClient(p.conn)
	if _, err := agentpb.NewHealthClient(p.conn).Check(ctx, &agentpb.CheckRequest{}); err != nil {
		return nil, fmt.Errorf("health: %w", err)
	}
	_, p.PolicyErr = p.Agent.SetPolicy(ctx, &agentpb.SetPolicyRequest{Policy: policy})
	if p.PolicyErr == nil {
		if err := p.network(ctx); err != nil {
			return nil, err
		}
		if _, err := p.Agent.CreateSandbox(ctx, &agentpb.CreateSandboxRequest{SandboxId: id, Hostname: id}); err != nil {
			return nil, fmt.Errorf("create sandbox: %w", err)
		}
	}
	ok = true
	return p, nil
}

// network gives the guest its address on the launcher's private network.
func (p *Pod) network(ctx context.Context) error {
	addr, bits, _ := strings.Cut(hostvmm.GuestCIDR, "/")
	if _, err := p.Agent.UpdateInterface(ctx, &agentpb.UpdateInterfaceRequest{Interface: &typespb.Interface{
		Name: "eth0", HwAddr: hostvmm.GuestMAC, Mtu: 1500,
		IPAddresses: []*typespb.IPAddress{{Family: typespb.IPFamily_v4, Address: addr, Mask: bits}},
	}}); err != nil {
		return fmt.Errorf("update interface: %w", err)
	}
	if _, err := p.Agent.UpdateRoutes(ctx, &agentpb.UpdateRoutesRequest{Routes: &agentpb.Routes{Routes: []*typespb.Route{
		{Dest: "default", Gateway: hostvmm.GatewayIP, Device: "eth0", Family: typespb.IPFamily_v4},
	}}}); err != nil {
		return fmt.Errorf("update routes: %w", err)
	}
	return nil
}

// RunWorkload runs the workload container from the verified image and
// returns what it printed and its exit status.
func (p *Pod) RunWorkload(ctx context.Context) (string, uint32, error) {
	p.nextCID++
	cid := "workload-" + strconv.Itoa(p.nextCID)
	spec := agenttest.Spec(initsysVerityRoot, "sh", "-c", WorkloadCommand)
	spec.Root.Readonly = true
	if _, err := p.Agent.CreateContainer(ctx, &agentpb.CreateContainerRequest{ContainerId: cid, ExecId: cid, OCI: spec}); err != nil {
		return "", 0, fmt.Errorf("create container: %w", err)
	}
	if _, err := p.Agent.StartContainer(ctx, &agentpb.StartContainerRequest{ContainerId: cid}); err != nil {
		return "", 0, fmt.Errorf("start container: %w", err)
	}
	var out bytes.Buffer
	for {
		r, err := p.Agent.ReadStdout(ctx, &agentpb.ReadStreamRequest{ContainerId: cid, ExecId: cid, Len: 4096})
		if err != nil {
			return "", 0, fmt.Errorf("read stdout: %w", err)
		}
		if len(r.Data) == 0 {
			break
		}
		out.Write(r.Data)
	}
	w, err := p.Agent.WaitProcess(ctx, &agentpb.WaitProcessRequest{ContainerId: cid, ExecId: cid})
	if err != nil {
		return "", 0, fmt.Errorf("wait: %w", err)
	}
	if _, err := p.Agent.RemoveContainer(ctx, &agentpb.RemoveContainerRequest{ContainerId: cid}); err != nil {
		return "", 0, fmt.Errorf("remove container: %w", err)
	}
	return out.String(), uint32(w.Status), nil
}

// initsysVerityRoot is where the agent mounts the verified image
// (initsys.VerityRootfsMount).
const initsysVerityRoot = "/run/cocoon-rootfs"

// Exec tries to exec into a running container of the pod; the policy
// refuses it before the agent looks at the container.
func (p *Pod) Exec(ctx context.Context) error {
	spec := agenttest.Spec("/", "sh", "-c", "cat /proc/self/environ").Process
	_, err := p.Agent.ExecProcess(ctx, &agentpb.ExecProcessRequest{ContainerId: "workload-1", ExecId: "debug", Process: spec})
	return err
}

// ConsoleLog returns the guest console.
func (p *Pod) ConsoleLog() string {
	b, _ := os.ReadFile(p.sb.ConsoleLog())
	return string(b)
}

// Stop destroys the sandbox (the agent powers the VM off) and waits.
func (p *Pod) Stop(ctx context.Context) (hostvmm.ExitInfo, error) {
	if _, err := p.Agent.DestroySandbox(ctx, &agentpb.DestroySandboxRequest{}); err != nil {
		p.sb.Stop(ctx)
	}
	return p.sb.Wait(ctx)
}

// Close cleans up everything the pod's launcher made.
func (p *Pod) Close() error {
	if p.conn != nil {
		p.conn.Close()
	}
	err := p.sb.Cleanup()
	if _, serr := os.Stat(p.state); !errors.Is(serr, os.ErrNotExist) {
		err = errors.Join(err, fmt.Errorf("pod state %s left behind", p.state))
	}
	return err
}
