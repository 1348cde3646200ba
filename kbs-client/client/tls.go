package client

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// ErrPinMismatch is the TLS failure when the KBS's certificate matches
// neither form of the configured pin.
var ErrPinMismatch = errors.New("the KBS certificate does not match the pinned SHA-256")

// ParsePin reads a SHA-256 certificate pin: 64 hex digits (colons allowed,
// as openssl prints fingerprints) or the base64 of the 32-byte digest, with
// an optional "sha256:" or "sha256/" prefix.
func ParsePin(s string) ([32]byte, error) {
	var out [32]byte
	v := strings.TrimSpace(s)
	for _, p := range []string{"sha256//", "sha256/", "sha256:", "SHA256:", "SHA256/"} {
		if rest, ok := strings.CutPrefix(v, p); ok {
			v = rest
			break
		}
	}
	if h := strings.ReplaceAll(v, ":", ""); len(h) == 64 {
		if b, err := hex.DecodeString(h); err == nil {
			copy(out[:], b)
			return out, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(v); err == nil && len(b) == 32 {
			copy(out[:], b)
			return out, nil
		}
	}
	return out, fmt.Errorf("certificate pin %q: want the SHA-256 of the certificate or of its public key, as 64 hex digits or base64", s)
}

// Pins returns the two pins a certificate answers to: SHA-256 of its DER
// encoding and SHA-256 of its SubjectPublicKeyInfo, in hex.
func Pins(cert *x509.Certificate) (certPin, spkiPin string) {
	c := sha256.Sum256(cert.Raw)
	k := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(c[:]), hex.EncodeToString(k[:])
}

// TLSConfig builds the client TLS configuration for a KBS.
//
// With a CA bundle only, the server's chain and name are verified against
// it. With a pin only, the chain is not verified (a self-signed KBS
// certificate is the usual case) but the leaf certificate must match the
// pin, by its DER or by its public key. With both, both checks apply. With
// neither, it returns nil: the system roots.
func TLSConfig(caPEM []byte, pin string) (*tls.Config, error) {
	if len(caPEM) == 0 && pin == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("kbs client: no certificate in the CA bundle")
		}
		cfg.RootCAs = pool
	}
	if pin == "" {
		return cfg, nil
	}
	want, err := ParsePin(pin)
	if err != nil {
		return nil, err
	}
	// Without a CA the standard verification has nothing to verify against;
	// the pin replaces it, and VerifyConnection still runs.
	cfg.InsecureSkipVerify = len(caPEM) == 0
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return ErrPinMismatch
		}
		leaf := cs.PeerCertificates[0]
		c := sha256.Sum256(leaf.Raw)
		k := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
		if bytes.Equal(c[:], want[:]) || bytes.Equal(k[:], want[:]) {
			return nil
		}
		return ErrPinMismatch
	}
	return cfg, nil
}
