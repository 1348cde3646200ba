// Package endpoint is the in-guest workload endpoint, compatible with the
// confidential-containers API server: containers of the pod ask it, on
// 127.0.0.1:8006, for resources, evidence and the KBS token, and it attests
// to the KBS on their behalf.
//
//	GET /cdh/resource/<repo>/<type>/<tag>   the resource bytes
//	GET /aa/evidence?runtime_data=<string>  SNP evidence (Trustee JSON) over the data
//	GET /aa/token?token_type=kbs            the KBS attestation token
//
// Errors: 400 bad request, 403 denied by the KBS (with its detail), 502 the
// KBS answered with an error, 503 the KBS is unreachable. Bodies of
// resources, tokens, keys and nonces are never logged.
package endpoint

import (
	"context"
	"crypto/sha512"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/cocoon-containers/cocoon/attestation"
	"github.com/cocoon-containers/cocoon/kbs-client/client"
	"github.com/cocoon-containers/cocoon/kbs-client/protocol"
)

// DefaultAddr is where the endpoint listens in the guest.
const DefaultAddr = "127.0.0.1:8006"

// Config configures the endpoint.
type Config struct {
	KBS      *client.Client
	Provider attestation.Provider
	Logger   *slog.Logger
}

// Server is the workload endpoint.
type Server struct {
	cfg Config
	log *slog.Logger
}

// New makes an endpoint.
func New(cfg Config) *Server {
	s := &Server{cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.Default()
	}
	return s
}

// ErrNotLoopback refuses a listen address off the loopback interface.
var ErrNotLoopback = errors.New("the workload endpoint listens on loopback only")

// Listen opens addr, which must be a loopback address.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("%w: %s", ErrNotLoopback, addr)
	}
	var lc net.ListenConfig
	return lc.Listen(ctx, "tcp", addr)
}

// Serve answers on l until ctx ends.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	err := hs.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Handler is the HTTP handler, refusing non-loopback peers.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /cdh/resource/", s.resource)
	mux.HandleFunc("GET /aa/evidence", s.evidence)
	mux.HandleFunc("GET /aa/token", s.token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		ip, perr := netip.ParseAddr(host)
		if err != nil || perr != nil || !ip.IsLoopback() {
			http.Error(w, "loopback only", http.StatusForbidden)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// fail maps a KBS client error to an HTTP status.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, what string, err error) {
	code := http.StatusBadGateway
	msg := err.Error()
	var ke *client.Error
	switch {
	case errors.Is(err, protocol.ErrBadPath):
		code = http.StatusBadRequest
	case errors.Is(err, client.ErrUnreachable):
		code, msg = http.StatusServiceUnavailable, "KBS unreachable"
	case errors.As(err, &ke) && (ke.Status == http.StatusUnauthorized || ke.Status == http.StatusForbidden):
		code, msg = http.StatusForbidden, "denied by the KBS: "+ke.Detail
	case errors.As(err, &ke) && ke.Status == http.StatusNotFound:
		code, msg = http.StatusNotFound, ke.Detail
	}
	s.log.WarnContext(r.Context(), what+" failed", "status", code, "error", msg)
	http.Error(w, msg, code)
}

func (s *Server) resource(w http.ResponseWriter, r *http.Request) {
	raw := strings.TrimPrefix(r.URL.EscapedPath(), "/cdh/resource/")
	if strings.Contains(raw, "%") {
		http.Error(w, "bad resource path: encoded characters", http.StatusBadRequest)
		return
	}
	if _, err := protocol.ParseResourcePath(raw); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if s.cfg.KBS == nil {
		http.Error(w, "no KBS configured", http.StatusServiceUnavailable)
		return
	}
	data, err := s.cfg.KBS.GetResource(r.Context(), raw)
	if err != nil {
		s.fail(w, r, "resource "+raw, err)
		return
	}
	s.log.InfoContext(r.Context(), "resource delivered", "path", raw, "bytes", len(data))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(data)
}

func (s *Server) evidence(w http.ResponseWriter, r *http.Request) {
	rt := r.URL.Query().Get("runtime_data")
	if len(rt) > 4096 {
		http.Error(w, "runtime_data too long", http.StatusBadRequest)
		return
	}
	if s.cfg.Provider == nil {
		http.Error(w, "no attestation provider", http.StatusServiceUnavailable)
		return
	}
	// The caller's runtime data is bound as its SHA-384, like the CoCo
	// attestation agent does for data longer than REPORT_DATA.
	var rd [64]byte
	sum := sha512.Sum384([]byte(rt))
	copy(rd[:], sum[:])
	ev, err := s.cfg.Provider.GetEvidence(r.Context(), rd)
	if err != nil {
		http.Error(w, "get evidence: "+err.Error(), http.StatusInternalServerError)
		return
	}
	b, err := attestation.MarshalTrusteeSNP(ev)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	if tt := r.URL.Query().Get("token_type"); tt != "kbs" {
		http.Error(w, fmt.Sprintf("token_type %q unsupported: want kbs", tt), http.StatusBadRequest)
		return
	}
	if s.cfg.KBS == nil {
		http.Error(w, "no KBS configured", http.StatusServiceUnavailable)
		return
	}
	tok, err := s.cfg.KBS.Token(r.Context())
	if err != nil {
		s.fail(w, r, "token", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, "{\"token\":%q}", tok)
}
