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

// jweSeeds are JWEs for k around the plaintext: valid ones, and the usual
// ways of getting one wrong.
func jweSeeds(t testing.TB, k *Key, plaintext []byte) [][]byte {
	t.Helper()
	good, err := Encrypt(k.Public(), plaintext)
	if err != nil {
		t.Fatal(err)
	}
	var flat map[string]any
	if err := json.Unmarshal(good, &flat); err != nil {
		t.Fatal(err)
	}
	variant := func(field string, change func(string) string) []byte {
		m := map[string]any{}
		for k, v := range flat {
			m[k] = v
		}
		m[field] = change(m[field].(string))
		b, _ := json.Marshal(m)
		return b
	}
	flip := func(s string) string {
		b, _ := base64.RawURLEncoding.DecodeString(s)
		if len(b) > 0 {
			b[len(b)-1] ^= 0x80
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	header := func(alg, enc string) func(string) string {
		return func(string) string {
			return base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"` + alg + `","enc":"` + enc + `"}`))
		}
	}
	enc, _ := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.KeyAlgorithm(k.alg), Key: k.Public()}, nil)
	seeds := [][]byte{good, variant("tag", flip), variant("ciphertext", flip), variant("iv", flip),
		variant("protected", header("dir", "A256GCM")), variant("protected", header(k.alg, "A128CBC-HS256")),
		variant("protected", header("none", "none")), good[:len(good)/2], []byte(`{}`), []byte(`[]`)}
	if enc != nil {
		// A general serialization with two recipients of the same key.
		pub, _, _ := PublicKey(k.Public())
		multi, err := jose.NewMultiEncrypter(jose.A256GCM, []jose.Recipient{
			{Algorithm: jose.KeyAlgorithm(k.alg), Key: pub}, {Algorithm: jose.KeyAlgorithm(k.alg), Key: pub}}, nil)
		if err == nil {
			if obj, err := multi.Encrypt(plaintext); err == nil {
				seeds = append(seeds, []byte(obj.FullSerialize()))
			}
		}
	}
	return seeds
}

func FuzzDecrypt(f *testing.F) {
	plaintext := []byte("fuzz seed plaintext")
	ec, err := New(protocol.AlgECDH)
	if err != nil {
		f.Fatal(err)
	}
	rsaKey, err := New(protocol.AlgRSAOAE)
	if err != nil {
		f.Fatal(err)
	}
	keys := []*Key{ec, rsaKey}
	for _, k := range keys {
		for _, s := range jweSeeds(f, k, plaintext) {
			f.Add(s)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, k := range keys {
			out, err := k.Decrypt(b)
			if err != nil {
				if out != nil {
					t.Fatal("a failed decryption returned plaintext")
				}
				continue
			}
			// Only the seeds' authors ever encrypted to these keys: anything
			// that opens must be their plaintext, never bytes an altered
			// message made up.
			if !bytes.Equal(out, plaintext) {
				t.Fatalf("decrypted to %q", out)
			}
		}
	})
}

func TestDecryptSeeds(t *testing.T) {
	plaintext := []byte("p")
	for _, alg := range []string{protocol.AlgECDH, protocol.AlgRSAOAE} {
		k, _ := New(alg)
		seeds := jweSeeds(t, k, plaintext)
		for i, s := range seeds {
			out, err := k.Decrypt(s)
			// Only the untouched JWE (first) and the two-recipient one
			// (last) are valid.
			valid := i == 0 || i == len(seeds)-1
			if valid != (err == nil) || (valid && !bytes.Equal(out, plaintext)) {
				t.Errorf("%s seed %d: %q, %v (valid %v)", alg, i, out, err, valid)
			}
		}
	}
}
