package teekey

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/cocoon-containers/cocoon/kbs-client/protocol"
)

func TestRoundTrip(t *testing.T) {
	for _, alg := range []string{protocol.AlgECDH, protocol.AlgRSAOAE} {
		t.Run(alg, func(t *testing.T) {
			k, err := New(alg)
			if err != nil {
				t.Fatal(err)
			}
			secret := []byte("the secret")
			jwe, err := Encrypt(k.Public(), secret)
			if err != nil {
				t.Fatal(err)
			}
			var flat map[string]any
			if err := json.Unmarshal(jwe, &flat); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"protected", "iv", "ciphertext", "tag"} {
				if _, ok := flat[f]; !ok {
					t.Errorf("JWE lacks %q: %s", f, jwe)
				}
			}
			got, err := k.Decrypt(jwe)
			if err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("Decrypt = %q, %v", got, err)
			}
			other, _ := New(alg)
			if _, err := other.Decrypt(jwe); err == nil {
				t.Fatal("another key decrypted the JWE")
			}
			// A modified tag fails.
			tag, _ := base64.RawURLEncoding.DecodeString(flat["tag"].(string))
			tag[0] ^= 1
			flat["tag"] = base64.RawURLEncoding.EncodeToString(tag)
			bad, _ := json.Marshal(flat)
			if _, err := k.Decrypt(bad); err == nil {
				t.Fatal("a modified tag decrypted")
			}
		})
	}
}

func TestRejectsUnsupportedAlgorithm(t *testing.T) {
	k, _ := New(protocol.AlgECDH)
	// A JWE with direct key agreement (no key wrap) is not accepted.
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.DIRECT, Key: make([]byte, 32)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	obj, _ := enc.Encrypt([]byte("x"))
	if _, err := k.Decrypt([]byte(obj.FullSerialize())); err == nil {
		t.Fatal("decrypted a dir/A256GCM JWE")
	}
	if _, err := New("A128KW"); err == nil {
		t.Fatal("New accepted an unsupported algorithm")
	}
}

func TestPublicKeyRejects(t *testing.T) {
	k, _ := New(protocol.AlgECDH)
	good := k.Public()
	offCurve := good
	offCurve.Y = base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	for name, j := range map[string]protocol.JWK{
		"off curve":   offCurve,
		"other curve": {Kty: "EC", Crv: "P-384", X: good.X, Y: good.Y},
		"bad kty":     {Kty: "oct"},
		"short rsa":   {Kty: "RSA", N: "AQAB", E: "AQAB"},
	} {
		if _, _, err := PublicKey(j); !errors.Is(err, ErrBadKey) {
			t.Errorf("%s: PublicKey = %v, want ErrBadKey", name, err)
		}
	}
}

func FuzzDecrypt(f *testing.F) {
	k, _ := New(protocol.AlgECDH)
	jwe, _ := Encrypt(k.Public(), []byte("seed"))
	f.Add(jwe)
	f.Fuzz(func(t *testing.T, b []byte) {
		k.Decrypt(b)
	})
}
