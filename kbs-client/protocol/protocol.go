// Package protocol holds the Trustee KBS protocol (version 0.4.0) messages,
// the canonical JSON (RFC 8785) used to bind the TEE key and nonce into
// REPORT_DATA, and resource path validation, shared by the KBS client, the
// workload endpoint and the reference KBS.
package protocol

import (
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Version is the protocol version this implementation speaks.
const Version = "0.4.0"

// SessionCookie names the KBS session cookie.
const SessionCookie = "kbs-session-id"

// ErrorTypePrefix starts every error "type".
const ErrorTypePrefix = "https://github.com/confidential-containers/kbs/errors/"

// Request starts a session: POST /kbs/v0/auth.
type Request struct {
	Version     string          `json:"version"`
	Tee         string          `json:"tee"`
	ExtraParams json.RawMessage `json:"extra-params"`
}

// Challenge answers Request.
type Challenge struct {
	Nonce       string          `json:"nonce"`
	ExtraParams json.RawMessage `json:"extra-params"`
}

// RuntimeData is what REPORT_DATA binds.
type RuntimeData struct {
	Nonce     string `json:"nonce"`
	TeePubKey JWK    `json:"tee-pubkey"`
}

// TeeEvidence carries the TEE's evidence.
type TeeEvidence struct {
	PrimaryEvidence    json.RawMessage `json:"primary_evidence"`
	AdditionalEvidence string          `json:"additional_evidence"`
}

// Attestation is POST /kbs/v0/attest.
type Attestation struct {
	InitData    json.RawMessage `json:"init-data"`
	RuntimeData RuntimeData     `json:"runtime-data"`
	TeeEvidence TeeEvidence     `json:"tee-evidence"`
}

// TokenResponse answers a successful Attestation.
type TokenResponse struct {
	Token string `json:"token"`
}

// ErrorInformation is the body of every KBS error.
type ErrorInformation struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
}

// JWK is a public key as the protocol carries it (EC P-256 or RSA).
type JWK struct {
	Kty string `json:"kty"`
	Alg string `json:"alg,omitempty"`
	Crv string `json:"crv,omitempty"`
	X   string `json:"x,omitempty"`
	Y   string `json:"y,omitempty"`
	N   string `json:"n,omitempty"`
	E   string `json:"e,omitempty"`
}

// Key algorithms for the TEE key.
const (
	AlgECDH   = "ECDH-ES+A256KW"
	AlgRSAOAE = "RSA-OAEP-256"
)

// ReportData is SHA-384 of the canonical JSON of {"additional-evidence",
// "nonce", "tee-pubkey"}, zero-padded to 64 bytes.
func ReportData(nonce string, key JWK, additionalEvidence string) ([64]byte, error) {
	var out [64]byte
	var keyObj map[string]any
	b, err := json.Marshal(key)
	if err != nil {
		return out, err
	}
	if err := json.Unmarshal(b, &keyObj); err != nil {
		return out, err
	}
	canon, err := Canonical(map[string]any{
		"additional-evidence": additionalEvidence,
		"nonce":               nonce,
		"tee-pubkey":          keyObj,
	})
	if err != nil {
		return out, err
	}
	sum := sha512.Sum384(canon)
	copy(out[:], sum[:])
	return out, nil
}

var segment = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ErrBadPath rejects a resource path.
var ErrBadPath = errors.New("bad resource path")

// ResourceURIScheme prefixes a resource named as a URI, as the confidential
// containers guest components name them: kbs:///<repo>/<type>/<tag>.
const ResourceURIScheme = "kbs:///"

// ResourceURIPath returns the "<repo>/<type>/<tag>" a kbs:/// URI names.
// ok is false when uri is not a kbs:/// URI at all; err is set when it is
// one whose path ParseResourcePath refuses.
func ResourceURIPath(uri string) (path string, ok bool, err error) {
	path, ok = strings.CutPrefix(uri, ResourceURIScheme)
	if !ok {
		return "", false, nil
	}
	if _, err := ParseResourcePath(path); err != nil {
		return "", true, err
	}
	return path, true, nil
}

// ParseResourcePath checks "<repo>/<type>/<tag>": exactly three segments of
// letters, digits, '.', '_' and '-', none "." or "..".
func ParseResourcePath(p string) ([3]string, error) {
	var out [3]string
	parts := strings.Split(p, "/")
	if len(parts) != 3 {
		return out, fmt.Errorf("%w %q: want <repo>/<type>/<tag>", ErrBadPath, p)
	}
	for i, s := range parts {
		if !segment.MatchString(s) || s == "." || s == ".." || strings.Contains(s, "..") {
			return out, fmt.Errorf("%w %q: segment %q", ErrBadPath, p, s)
		}
		out[i] = s
	}
	return out, nil
}
