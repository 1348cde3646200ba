package clh

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// The test binary doubles as a fake cloud-hypervisor and a fake virtiofsd
// when COCOON_FAKE_VMM=1: TestMain dispatches on the arguments. The fake
// records every request in the file COCOON_FAKE_RECORD and behaves as
// COCOON_FAKE_MODE says:
//
//	ok                 the happy path
//	boot-500           vm.boot answers 500
//	create-ignored     vm.create answers 204 but creates nothing (vm.info 404)
//	die-after-create   the VMM exits with code 3 after answering vm.create
//	ignore-shutdown    vmm.shutdown answers 204 and the VMM keeps running
//
// COCOON_FAKE_FEATURES is the comma-separated vmm.ping feature list.

func fakeMain(args []string) int {
	// Die with the test process.
	unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0)
	for _, a := range args {
		switch {
		case a == "--help":
			fmt.Println("  --shared-dir <dir>   shared directory")
			return 0
		case strings.HasPrefix(a, "--socket-path="):
			return fakeVirtiofsd(strings.TrimPrefix(a, "--socket-path="), args)
		case a == "--api-socket":
			return fakeCLH(args)
		}
	}
	fmt.Fprintln(os.Stderr, "fake vmm: unknown arguments", args)
	return 2
}

var recordMu sync.Mutex

// record appends one JSON line to the record file.
func record(v any) {
	recordMu.Lock()
	defer recordMu.Unlock()
	f, err := os.OpenFile(os.Getenv("COCOON_FAKE_RECORD"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		panic(err)
	}
	defer f.Close()
	b, _ := json.Marshal(v)
	f.Write(append(b, '\n'))
}

func fakeVirtiofsd(sock string, args []string) int {
	record(map[string]any{"virtiofsd": args})
	l, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return 1
		}
		c.Close()
	}
}

type fakeVMM struct {
	mode    string
	mu      sync.Mutex
	created *VmConfig
	state   VMState
}

func fakeCLH(args []string) int {
	if len(args) != 2 || !strings.HasPrefix(args[1], "path=") {
		fmt.Fprintln(os.Stderr, "fake clh: want --api-socket path=SOCKET, got", args)
		return 2
	}
	l, err := net.Listen("unix", strings.TrimPrefix(args[1], "path="))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	f := &fakeVMM{mode: os.Getenv("COCOON_FAKE_MODE")}
	http.Serve(l, f)
	return 1
}

// dying is set once the fake decided to exit: later requests race with the
// exit and are not recorded.
var dying atomic.Bool

func (f *fakeVMM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if dying.Load() {
		return
	}
	body, _ := io.ReadAll(r.Body)
	rec := map[string]any{"method": r.Method, "path": r.URL.Path}
	if len(body) > 0 {
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		rec["body"] = v
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			rec["content_type"] = ct
		}
	}
	record(rec)
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.Method + " " + r.URL.Path {
	case "GET /api/v1/vmm.ping":
		var features []string
		if s := os.Getenv("COCOON_FAKE_FEATURES"); s != "" {
			features = strings.Split(s, ",")
		}
		json.NewEncoder(w).Encode(VmmPingResponse{Version: "v48.0", Pid: int64(os.Getpid()), Features: features})
	case "PUT /api/v1/vm.create":
		var vc VmConfig
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&vc); err != nil || (vc.Payload.Kernel == "" && vc.Payload.IGVM == "") {
			http.Error(w, "invalid VmConfig", http.StatusBadRequest)
			return
		}
		if f.created != nil {
			http.Error(w, "VM already created", http.StatusInternalServerError)
			return
		}
		if f.mode != "create-ignored" {
			f.created, f.state = &vc, StateCreated
		}
		w.WriteHeader(http.StatusNoContent)
		if f.mode == "die-after-create" {
			dying.Store(true)
			w.(http.Flusher).Flush()
			os.Exit(3)
		}
	case "GET /api/v1/vm.info":
		if f.created == nil {
			http.Error(w, "VM not created", http.StatusNotFound)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"config": f.created, "state": f.state})
	case "PUT /api/v1/vm.boot":
		if f.created == nil {
			http.Error(w, "VM not created", http.StatusNotFound)
			return
		}
		if f.mode == "boot-500" {
			http.Error(w, "failed to boot: no kernel entry point", http.StatusInternalServerError)
			return
		}
		if err := serveAgent(f.created.Vsock.Socket); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		f.state = StateRunning
		w.WriteHeader(http.StatusNoContent)
	case "PUT /api/v1/vm.shutdown":
		if f.created == nil {
			http.Error(w, "VM not created", http.StatusNotFound)
			return
		}
		f.state = StateShutdown
		w.WriteHeader(http.StatusNoContent)
	case "PUT /api/v1/vmm.shutdown":
		w.WriteHeader(http.StatusNoContent)
		if f.mode != "ignore-shutdown" {
			w.(http.Flusher).Flush()
			go func() { time.Sleep(20 * time.Millisecond); os.Exit(0) }()
		}
	default:
		http.Error(w, "unknown endpoint", http.StatusNotFound)
	}
}

// serveAgent plays the guest behind the hybrid vsock socket: it answers
// "CONNECT 1024" with "OK" and serves Health on the connection.
func serveAgent(sock string) error {
	l, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	agentpb.RegisterHealthService(srv, fakeHealth{})
	go srv.Serve(context.Background(), &handshakeListener{Listener: l})
	return nil
}

type handshakeListener struct{ net.Listener }

func (l *handshakeListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "CONNECT 1024\n" {
			c.Close()
			continue
		}
		if _, err := c.Write([]byte("OK 1073741824\n")); err != nil {
			c.Close()
			continue
		}
		return c, nil
	}
}

type fakeHealth struct{}

func (fakeHealth) Check(context.Context, *agentpb.CheckRequest) (*agentpb.HealthCheckResponse, error) {
	return &agentpb.HealthCheckResponse{Status: agentpb.HealthCheckResponse_SERVING}, nil
}

func (fakeHealth) Version(context.Context, *agentpb.CheckRequest) (*agentpb.VersionCheckResponse, error) {
	return &agentpb.VersionCheckResponse{AgentVersion: "fake-clh-guest"}, nil
}
