// Package teekey holds the ephemeral TEE key pair of one attestation and
// the JWE operations on it: the KBS encrypts resources to the public key
// (ECDH-ES+A256KW or RSA-OAEP-256 with A256GCM) and only the guest, which
// never lets the private key leave its memory, decrypts them.
package teekey

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/cocoon-containers/cocoon/kbs-client/protocol"
)

// Key is a private TEE key.
type Key struct {
	alg  string
	priv crypto.PrivateKey
}

// New generates a key for alg (protocol.AlgECDH or protocol.AlgRSAOAE).
func New(alg string) (*Key, error) {
	switch alg {
	case "", protocol.AlgECDH:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		return &Key{alg: protocol.AlgECDH, priv: k}, nil
	case protocol.AlgRSAOAE:
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, err
		}
		return &Key{alg: protocol.AlgRSAOAE, priv: k}, nil
	}
	return nil, fmt.Errorf("tee key algorithm %q unsupported", alg)
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// Public returns the JWK the protocol sends as tee-pubkey.
func (k *Key) Public() protocol.JWK {
	switch p := k.priv.(type) {
	case *ecdsa.PrivateKey:
		raw, err := p.PublicKey.Bytes() // 0x04 || X || Y
		if err != nil || len(raw) != 65 {
			return protocol.JWK{}
		}
		return protocol.JWK{Kty: "EC", Crv: "P-256", Alg: k.alg, X: b64(raw[1:33]), Y: b64(raw[33:])}
	case *rsa.PrivateKey:
		return protocol.JWK{Kty: "RSA", Alg: k.alg, N: b64(p.N.Bytes()), E: b64(big.NewInt(int64(p.E)).Bytes())}
	}
	return protocol.JWK{}
}

// Decrypt opens a flattened (or general) JSON JWE addressed to this key.
func (k *Key) Decrypt(jwe []byte) ([]byte, error) {
	obj, err := jose.ParseEncryptedJSON(string(jwe), []jose.KeyAlgorithm{jose.ECDH_ES_A256KW, jose.RSA_OAEP_256}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return nil, fmt.Errorf("parse JWE: %w", err)
	}
	// DecryptMulti handles the flattened form (one recipient) and the
	// general form alike, and tells which recipient's header applied.
	_, hdr, out, err := obj.DecryptMulti(k.priv)
	if err != nil {
		return nil, fmt.Errorf("decrypt JWE: %w", err)
	}
	if hdr.Algorithm != k.alg {
		return nil, fmt.Errorf("JWE key algorithm %s, want %s", hdr.Algorithm, k.alg)
	}
	return out, nil
}

// ErrBadKey rejects a tee-pubkey.
var ErrBadKey = errors.New("bad tee-pubkey")

func unb64(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

// PublicKey converts a JWK from the protocol into a Go public key.
func PublicKey(j protocol.JWK) (crypto.PublicKey, string, error) {
	switch j.Kty {
	case "EC":
		if j.Crv != "P-256" || (j.Alg != "" && j.Alg != protocol.AlgECDH) {
			return nil, "", fmt.Errorf("%w: EC key crv %q alg %q", ErrBadKey, j.Crv, j.Alg)
		}
		x, err1 := unb64(j.X)
		y, err2 := unb64(j.Y)
		if err1 != nil || err2 != nil || len(x) != 32 || len(y) != 32 {
			return nil, "", fmt.Errorf("%w: EC coordinates", ErrBadKey)
		}
		// Parsing rejects points off the curve.
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return nil, "", fmt.Errorf("%w: %v", ErrBadKey, err)
		}
		return pub, protocol.AlgECDH, nil
	case "RSA":
		if j.Alg != "" && j.Alg != protocol.AlgRSAOAE {
			return nil, "", fmt.Errorf("%w: RSA alg %q", ErrBadKey, j.Alg)
		}
		n, err1 := unb64(j.N)
		e, err2 := unb64(j.E)
		if err1 != nil || err2 != nil || len(n) < 256 || len(n) > 1024 || len(e) == 0 || len(e) > 4 {
			return nil, "", fmt.Errorf("%w: RSA modulus or exponent", ErrBadKey)
		}
		exp := new(big.Int).SetBytes(e).Int64()
		mod := new(big.Int).SetBytes(n)
		// A usable RSA key has an odd exponent of at least 3 and an odd
		// modulus of full length; anything else would not really encrypt.
		if exp < 3 || exp%2 == 0 || exp > 1<<31-1 || mod.Bit(0) == 0 || n[0] == 0 {
			return nil, "", fmt.Errorf("%w: RSA modulus or exponent", ErrBadKey)
		}
		return &rsa.PublicKey{N: mod, E: int(exp)}, protocol.AlgRSAOAE, nil
	}
	return nil, "", fmt.Errorf("%w: kty %q", ErrBadKey, j.Kty)
}

// Encrypt makes the flattened JSON JWE of plaintext for a tee-pubkey.
func Encrypt(j protocol.JWK, plaintext []byte) ([]byte, error) {
	pub, alg, err := PublicKey(j)
	if err != nil {
		return nil, err
	}
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.KeyAlgorithm(alg), Key: pub}, nil)
	if err != nil {
		return nil, err
	}
	obj, err := enc.Encrypt(plaintext)
	if err != nil {
		return nil, err
	}
	return []byte(obj.FullSerialize()), nil
}
