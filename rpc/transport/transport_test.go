package transport

import (
	"context"
	"errors"
	"math"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    Addr
		wantErr bool
	}{
		{in: "unix:///run/agent.sock", want: Addr{Scheme: Unix, Path: "/run/agent.sock"}},
		{in: "vsock://-1:1024", want: Addr{Scheme: Vsock, CID: math.MaxUint32, Port: 1024}},
		{in: "vsock://3:1024", want: Addr{Scheme: Vsock, CID: 3, Port: 1024}},
		{in: "hvsock:///run/vm/vsock.sock:1024", want: Addr{Scheme: HVsock, Path: "/run/vm/vsock.sock", Port: 1024}},
		{in: "hvsock:///a:b/c.sock:7", want: Addr{Scheme: HVsock, Path: "/a:b/c.sock", Port: 7}},
		{in: "serial://agent.channel.0", want: Addr{Scheme: Serial, Name: "agent.channel.0"}},
		{in: "/run/agent.sock", wantErr: true},
		{in: "unix://", wantErr: true},
		{in: "vsock://1024", wantErr: true},
		{in: "vsock://x:1024", wantErr: true},
		{in: "vsock://3:0", wantErr: true},
		{in: "vsock://3:99999999999", wantErr: true},
		{in: "hvsock://:1024", wantErr: true},
		{in: "hvsock:///x.sock", wantErr: true},
		{in: "serial://../vport0p1", wantErr: true},
		{in: "serial://", wantErr: true},
		{in: "tcp://127.0.0.1:80", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.wantErr {
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("Parse(%q) error = %v, want invalid argument", tt.in, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("Parse(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			if back, err := Parse(got.String()); err != nil || back != got {
				t.Fatalf("round trip of %q: got %+v, %v", got.String(), back, err)
			}
		})
	}
}

// healthServer answers Health with a fixed agent version.
type healthServer struct{}

func (healthServer) Check(context.Context, *agentpb.CheckRequest) (*agentpb.HealthCheckResponse, error) {
	return &agentpb.HealthCheckResponse{Status: agentpb.HealthCheckResponse_SERVING}, nil
}

func (healthServer) Version(context.Context, *agentpb.CheckRequest) (*agentpb.VersionCheckResponse, error) {
	return &agentpb.VersionCheckResponse{AgentVersion: "test-1.0"}, nil
}

// serveHealth serves the Health service on l until the test ends.
func serveHealth(t *testing.T, l net.Listener) {
	t.Helper()
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	agentpb.RegisterHealthService(srv, healthServer{})
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() { srv.Close() })
}

// checkHealth makes one Health call over c.
func checkHealth(t *testing.T, c net.Conn) {
	t.Helper()
	client := ttrpc.NewClient(c)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := agentpb.NewHealthClient(client).Version(ctx, &agentpb.CheckRequest{})
	if err != nil {
		t.Fatalf("Health.Version: %v", err)
	}
	if got, want := resp.AgentVersion, "test-1.0"; got != want {
		t.Fatalf("agent version = %q, want %q", got, want)
	}
}

func TestUnixRoundTrip(t *testing.T) {
	addr := "unix://" + filepath.Join(t.TempDir(), "agent.sock")
	ctx := context.Background()
	l, err := Listen(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	serveHealth(t, l)
	c, err := Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	checkHealth(t, c)
}

func TestListenAndDialRefuseWrongSide(t *testing.T) {
	ctx := context.Background()
	if _, err := Listen(ctx, "hvsock:///tmp/x.sock:1024"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("Listen(hvsock) error = %v, want invalid argument", err)
	}
	if _, err := Dial(ctx, "serial://agent.channel.0"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("Dial(serial) error = %v, want invalid argument", err)
	}
}

// TestVsockListen only listens: dialing AF_VSOCK on a host without a vsock
// loopback transport would leave the machine.
func TestVsockListen(t *testing.T) {
	l, err := Listen(context.Background(), "vsock://-1:10240")
	if err != nil {
		t.Skipf("AF_VSOCK not available on this host: %v", err)
	}
	defer l.Close()
	if got, want := l.Addr().Network(), "vsock"; got != want {
		t.Fatalf("network = %q, want %q", got, want)
	}
}
