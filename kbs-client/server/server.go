// Package server is the reference KBS: it speaks the Trustee KBS protocol
// (0.4.0) with Cocoon's SNP verifier and Rego policies over the verified
// claims. It serves development, tests and the demo; production points the
// guest at a Trustee KBS.
//
// Resources are files <repository>/<repo>/<type>/<tag>. The admin API takes
// a bearer key: POST /kbs/v0/resource/<repo>/<type>/<tag> (body = resource)
// and POST /kbs/v0/resource-policy ({"policy": base64 Rego}).
//
// Policies are Rego in package "policy" with rule "allow"; input is
// {"claims": <attestation.Claims>, "resource": {"path", "repository",
// "type", "tag"}} for resources and {"claims": ...} for attestation.
package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/google/go-sev-guest/verify/trust"
	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/cocoon-containers/cocoon/attestation"
	"github.com/cocoon-containers/cocoon/kbs-client/protocol"
	"github.com/cocoon-containers/cocoon/kbs-client/teekey"
)

// DefaultResourcePolicy releases resources to any guest that attested.
const DefaultResourcePolicy = `package policy

import rego.v1

default allow := false

allow if input.claims.measurement != ""
`

// Config configures the KBS.
type Config struct {
	Repository        string
	AdminKey          []byte
	ResourcePolicy    string
	AttestationPolicy string
	TrustSimulated    bool
	Getter            trust.HTTPSGetter
	SessionTTL        time.Duration
	TokenTTL          time.Duration
	Logger            *slog.Logger
}

const (
	maxBody        = 1 << 20
	maxSessions    = 4096
	maxResource    = 1 << 20
	maxPolicyBytes = 1 << 20
)

// Server is the KBS.
type Server struct {
	cfg    Config
	log    *slog.Logger
	signer jose.Signer
	key    *ecdsa.PrivateKey

	mu       sync.Mutex
	sessions map[string]*session
	resPol   *rego.PreparedEvalQuery
	attPol   *rego.PreparedEvalQuery
}

type session struct {
	nonce     string
	expires   time.Time
	nonceUsed bool
	token     string
	pubkey    protocol.JWK
	claims    *attestation.Claims
}

// New creates a KBS with a fresh token signing key.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Repository == "" {
		return nil, errors.New("kbs: no resource repository")
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = 5 * time.Minute
	}
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = 5 * time.Minute
	}
	if cfg.ResourcePolicy == "" {
		cfg.ResourcePolicy = DefaultResourcePolicy
	}
	s := &Server{cfg: cfg, log: cfg.Logger, sessions: map[string]*session{}}
	if s.log == nil {
		s.log = slog.Default()
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	s.key = k
	if s.signer, err = jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, (&jose.SignerOptions{}).WithType("JWT")); err != nil {
		return nil, err
	}
	if s.resPol, err = preparePolicy(ctx, cfg.ResourcePolicy); err != nil {
		return nil, fmt.Errorf("resource policy: %w", err)
	}
	if cfg.AttestationPolicy != "" {
		if s.attPol, err = preparePolicy(ctx, cfg.AttestationPolicy); err != nil {
			return nil, fmt.Errorf("attestation policy: %w", err)
		}
	}
	return s, nil
}

func preparePolicy(ctx context.Context, text string) (*rego.PreparedEvalQuery, error) {
	if len(text) > maxPolicyBytes {
		return nil, fmt.Errorf("policy of %d bytes too large", len(text))
	}
	q, err := rego.New(rego.Query("data.policy.allow"), rego.Module("policy.rego", text)).PrepareForEval(ctx)
	if err != nil {
		return nil, err
	}
	return &q, nil
}

func allowed(ctx context.Context, q *rego.PreparedEvalQuery, input any) (bool, error) {
	rs, err := q.Eval(ctx, rego.EvalInput(input))
	if err != nil {
		return false, err
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return false, nil
	}
	b, _ := rs[0].Expressions[0].Value.(bool)
	return b, nil
}

// Handler serves the protocol under /kbs/v0/.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /kbs/v0/auth", s.auth)
	mux.HandleFunc("POST /kbs/v0/attest", s.attest)
	mux.HandleFunc("GET /kbs/v0/resource/", s.getResource)
	mux.HandleFunc("POST /kbs/v0/resource/", s.setResource)
	mux.HandleFunc("POST /kbs/v0/resource-policy", s.setResourcePolicy)
	return mux
}

func writeError(w http.ResponseWriter, code int, variant, detail string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(protocol.ErrorInformation{Type: protocol.ErrorTypePrefix + variant, Detail: detail})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// readBody reads a bounded request body; false means an error answer was
// written.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "InvalidRequest", fmt.Sprintf("request body over %d bytes", maxBody))
		} else {
			writeError(w, http.StatusBadRequest, "InvalidRequest", "cannot read the request body")
		}
		return nil, false
	}
	return b, true
}

func (s *Server) auth(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	req, err := protocol.ParseRequest(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "InvalidRequest", "request body is not a KBS Request")
		return
	}
	if req.Version != protocol.Version {
		writeError(w, http.StatusBadRequest, "ProtocolVersion", fmt.Sprintf("protocol version %q unsupported, want %s", req.Version, protocol.Version))
		return
	}
	if req.Tee != "snp" {
		writeError(w, http.StatusBadRequest, "UnsupportedTee", fmt.Sprintf("tee %q unsupported", req.Tee))
		return
	}
	id := randomString(24)
	sess := &session{nonce: randomString(32), expires: time.Now().Add(s.cfg.SessionTTL)}
	s.mu.Lock()
	s.gcLocked()
	if len(s.sessions) >= maxSessions {
		s.mu.Unlock()
		writeError(w, http.StatusServiceUnavailable, "TooManySessions", "too many open sessions")
		return
	}
	s.sessions[id] = sess
	s.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: protocol.SessionCookie, Value: id, Path: "/kbs", Expires: sess.expires, HttpOnly: true})
	writeJSON(w, protocol.Challenge{Nonce: sess.nonce, ExtraParams: json.RawMessage(`""`)})
}

func (s *Server) gcLocked() {
	now := time.Now()
	for id, sess := range s.sessions {
		if now.After(sess.expires) {
			delete(s.sessions, id)
		}
	}
}

func (s *Server) sessionOf(r *http.Request) (string, *session) {
	c, err := r.Cookie(protocol.SessionCookie)
	if err != nil {
		return "", nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.sessions[c.Value]
	if !ok || time.Now().After(sess.expires) {
		return c.Value, nil
	}
	return c.Value, sess
}

// decodeAttestation parses an /attest body down to the SNP evidence: the
// message shape, the tee-pubkey as a usable key, and the Trustee SNP JSON.
// Nothing is verified yet.
func decodeAttestation(body []byte) (*protocol.Attestation, *attestation.Evidence, error) {
	att, err := protocol.ParseAttestation(body)
	if err != nil {
		return nil, nil, err
	}
	if _, _, err := teekey.PublicKey(att.RuntimeData.TeePubKey); err != nil {
		return nil, nil, err
	}
	ev, err := attestation.ParseTrusteeSNP(att.TeeEvidence.PrimaryEvidence)
	if err != nil {
		return nil, nil, fmt.Errorf("evidence: %w", err)
	}
	return att, ev, nil
}

// sessionTag names a session in logs without revealing its cookie.
func sessionTag(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:4])
}

func (s *Server) attest(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id, sess := s.sessionOf(r)
	if sess == nil {
		writeError(w, http.StatusUnauthorized, "InvalidSession", "no valid session: call /auth first")
		return
	}
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	used := sess.nonceUsed
	sess.nonceUsed = true
	s.mu.Unlock()
	if used {
		writeError(w, http.StatusUnauthorized, "InvalidSession", "the session's nonce was already used")
		return
	}
	att, ev, err := decodeAttestation(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "InvalidRequest", err.Error())
		return
	}
	if subtle.ConstantTimeCompare([]byte(att.RuntimeData.Nonce), []byte(sess.nonce)) != 1 {
		writeError(w, http.StatusUnauthorized, "AttestationFailed", "nonce does not belong to this session")
		return
	}
	rd, err := protocol.ReportData(att.RuntimeData.Nonce, att.RuntimeData.TeePubKey, att.TeeEvidence.AdditionalEvidence)
	if err != nil {
		writeError(w, http.StatusBadRequest, "InvalidRequest", err.Error())
		return
	}
	claims, err := attestation.Verify(ctx, ev, attestation.VerifyOptions{ReportData: &rd, TrustSimulated: s.cfg.TrustSimulated, Getter: s.cfg.Getter})
	if err != nil {
		s.log.WarnContext(ctx, "attestation failed", "error", err)
		writeError(w, http.StatusUnauthorized, "AttestationFailed", err.Error())
		return
	}
	if s.attPol != nil {
		ok, err := allowed(ctx, s.attPol, map[string]any{"claims": claims})
		if err != nil || !ok {
			writeError(w, http.StatusUnauthorized, "PolicyDeny", "the attestation policy rejects this guest")
			return
		}
	}
	token, err := s.issueToken(att.RuntimeData.TeePubKey, claims)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "TokenIssueFailed", err.Error())
		return
	}
	s.mu.Lock()
	sess.token, sess.pubkey, sess.claims = token, att.RuntimeData.TeePubKey, claims
	s.mu.Unlock()
	s.log.InfoContext(ctx, "guest attested", "session", sessionTag(id), "measurement", claims.Measurement, "host_data", claims.HostData, "simulated", claims.Simulated)
	writeJSON(w, protocol.TokenResponse{Token: token})
}

type tokenClaims struct {
	Issuer    string              `json:"iss"`
	IssuedAt  int64               `json:"iat"`
	Expires   int64               `json:"exp"`
	TeePubKey protocol.JWK        `json:"tee-pubkey"`
	Claims    *attestation.Claims `json:"claims"`
}

func (s *Server) issueToken(key protocol.JWK, claims *attestation.Claims) (string, error) {
	now := time.Now()
	b, err := json.Marshal(tokenClaims{Issuer: "cocoon-kbs", IssuedAt: now.Unix(), Expires: now.Add(s.cfg.TokenTTL).Unix(), TeePubKey: key, Claims: claims})
	if err != nil {
		return "", err
	}
	obj, err := s.signer.Sign(b)
	if err != nil {
		return "", err
	}
	return obj.CompactSerialize()
}

func (s *Server) verifyToken(tok string) (*tokenClaims, error) {
	obj, err := jose.ParseSignedCompact(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return nil, err
	}
	b, err := obj.Verify(&s.key.PublicKey)
	if err != nil {
		return nil, err
	}
	var tc tokenClaims
	if err := json.Unmarshal(b, &tc); err != nil {
		return nil, err
	}
	if time.Now().Unix() > tc.Expires {
		return nil, errors.New("token expired")
	}
	return &tc, nil
}

// resourcePath extracts and checks <repo>/<type>/<tag>; encoded slashes and
// dot segments are refused.
func resourcePath(r *http.Request) ([3]string, error) {
	raw := r.URL.EscapedPath()
	rest, ok := strings.CutPrefix(raw, "/kbs/v0/resource/")
	if !ok || strings.Contains(rest, "%") {
		return [3]string{}, fmt.Errorf("%w: encoded characters", protocol.ErrBadPath)
	}
	return protocol.ParseResourcePath(rest)
}

func (s *Server) getResource(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	parts, err := resourcePath(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "InvalidRequest", err.Error())
		return
	}
	var key protocol.JWK
	var claims *attestation.Claims
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		tc, err := s.verifyToken(tok)
		if err != nil {
			writeError(w, http.StatusUnauthorized, "TokenVerificationFailed", err.Error())
			return
		}
		key, claims = tc.TeePubKey, tc.Claims
	} else {
		_, sess := s.sessionOf(r)
		if sess == nil || sess.claims == nil {
			writeError(w, http.StatusUnauthorized, "UnAuthenticated", "attest first")
			return
		}
		s.mu.Lock()
		key, claims = sess.pubkey, sess.claims
		s.mu.Unlock()
	}
	path := strings.Join(parts[:], "/")
	ok, err := allowed(ctx, s.currentResourcePolicy(), map[string]any{
		"claims":   claims,
		"resource": map[string]string{"path": path, "repository": parts[0], "type": parts[1], "tag": parts[2]},
	})
	if err != nil {
		writeError(w, http.StatusInternalServerError, "PolicyEngineFailed", err.Error())
		return
	}
	if !ok {
		s.log.WarnContext(ctx, "resource denied by policy", "path", path, "measurement", claims.Measurement, "host_data", claims.HostData)
		writeError(w, http.StatusForbidden, "PolicyDeny", fmt.Sprintf("the resource policy denies %s to this guest", path))
		return
	}
	f := filepath.Join(s.cfg.Repository, parts[0], parts[1], parts[2])
	st, err := os.Lstat(f)
	if err != nil || !st.Mode().IsRegular() || st.Size() > maxResource {
		writeError(w, http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("no resource %s", path))
		return
	}
	data, err := os.ReadFile(f)
	if err != nil {
		writeError(w, http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("no resource %s", path))
		return
	}
	jwe, err := teekey.Encrypt(key, data)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "JweEncryptionFailed", err.Error())
		return
	}
	s.log.InfoContext(ctx, "resource released", "path", path)
	w.Header().Set("Content-Type", "application/json")
	w.Write(jwe)
}

func (s *Server) currentResourcePolicy() *rego.PreparedEvalQuery {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resPol
}

func (s *Server) admin(w http.ResponseWriter, r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if len(s.cfg.AdminKey) == 0 || !ok || subtle.ConstantTimeCompare([]byte(tok), s.cfg.AdminKey) != 1 {
		writeError(w, http.StatusUnauthorized, "AdminAuthFailed", "admin key required")
		return false
	}
	return true
}

func (s *Server) setResource(w http.ResponseWriter, r *http.Request) {
	if !s.admin(w, r) {
		return
	}
	parts, err := resourcePath(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "InvalidRequest", err.Error())
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxResource))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "InvalidRequest", "resource too large")
		return
	}
	dir := filepath.Join(s.cfg.Repository, parts[0], parts[1])
	if err := os.MkdirAll(dir, 0o700); err != nil {
		writeError(w, http.StatusInternalServerError, "SetSecretFailed", "cannot store the resource")
		return
	}
	tmp, err := os.CreateTemp(dir, ".upload-*")
	if err == nil {
		_, err = tmp.Write(data)
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), filepath.Join(dir, parts[2]))
		}
		if err != nil {
			os.Remove(tmp.Name())
		}
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "SetSecretFailed", "cannot store the resource")
		return
	}
	s.log.InfoContext(r.Context(), "resource set", "path", strings.Join(parts[:], "/"), "bytes", len(data))
}

func (s *Server) setResourcePolicy(w http.ResponseWriter, r *http.Request) {
	if !s.admin(w, r) {
		return
	}
	var body struct {
		Policy string `json:"policy"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxPolicyBytes*2)).Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, "InvalidRequest", "want {\"policy\": base64}")
		return
	}
	text, err := base64.StdEncoding.DecodeString(body.Policy)
	if err != nil {
		if text, err = base64.RawURLEncoding.DecodeString(body.Policy); err != nil {
			writeError(w, http.StatusBadRequest, "InvalidRequest", "policy is not base64")
			return
		}
	}
	q, err := preparePolicy(r.Context(), string(text))
	if err != nil {
		writeError(w, http.StatusBadRequest, "PolicyEngineFailed", err.Error())
		return
	}
	s.mu.Lock()
	s.resPol = q
	s.mu.Unlock()
	s.log.InfoContext(r.Context(), "resource policy set", "bytes", len(text))
}
