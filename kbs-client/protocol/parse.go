package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Limits on message fields. A nonce from a KBS is a few dozen characters;
// anything far longer is not a nonce.
const (
	MaxNonce    = 1024
	MaxEvidence = 1 << 20
)

// ErrMalformed rejects a protocol message that does not parse or lacks a
// required field.
var ErrMalformed = errors.New("malformed KBS message")

// ParseChallenge reads the KBS's answer to /auth. The nonce must be present,
// bounded, and free of control characters (it is echoed in canonical JSON).
func ParseChallenge(b []byte) (Challenge, error) {
	var ch Challenge
	if err := json.Unmarshal(b, &ch); err != nil {
		return Challenge{}, fmt.Errorf("%w: challenge: %v", ErrMalformed, err)
	}
	if err := checkNonce(ch.Nonce); err != nil {
		return Challenge{}, fmt.Errorf("%w: challenge: %v", ErrMalformed, err)
	}
	return ch, nil
}

// ParseRequest reads the body of /auth. It checks the shape only; the
// server decides which versions and TEEs it accepts.
func ParseRequest(b []byte) (Request, error) {
	var r Request
	if err := json.Unmarshal(b, &r); err != nil {
		return Request{}, fmt.Errorf("%w: request: %v", ErrMalformed, err)
	}
	if r.Version == "" || r.Tee == "" {
		return Request{}, fmt.Errorf("%w: request: version and tee are required", ErrMalformed)
	}
	return r, nil
}

// ParseAttestation reads the body of /attest: runtime-data must carry a
// nonce and a tee-pubkey with a key type, and tee-evidence a JSON object as
// primary_evidence. Whether the key and evidence are acceptable is the
// verifier's business.
func ParseAttestation(b []byte) (*Attestation, error) {
	var a Attestation
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("%w: attestation: %v", ErrMalformed, err)
	}
	if err := checkNonce(a.RuntimeData.Nonce); err != nil {
		return nil, fmt.Errorf("%w: attestation: %v", ErrMalformed, err)
	}
	if a.RuntimeData.TeePubKey.Kty == "" {
		return nil, fmt.Errorf("%w: attestation: runtime-data has no tee-pubkey", ErrMalformed)
	}
	ev := bytes.TrimSpace(a.TeeEvidence.PrimaryEvidence)
	if len(ev) == 0 || ev[0] != '{' {
		return nil, fmt.Errorf("%w: attestation: primary_evidence is not a JSON object", ErrMalformed)
	}
	if len(ev) > MaxEvidence {
		return nil, fmt.Errorf("%w: attestation: primary_evidence of %d bytes", ErrMalformed, len(ev))
	}
	return &a, nil
}

func checkNonce(n string) error {
	if n == "" {
		return errors.New("no nonce")
	}
	if len(n) > MaxNonce {
		return fmt.Errorf("nonce of %d bytes", len(n))
	}
	for _, c := range n {
		if c < 0x20 || c == 0x7f {
			return errors.New("control character in the nonce")
		}
	}
	return nil
}
