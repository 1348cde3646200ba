package protocol

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseChallenge(t *testing.T) {
	ch, err := ParseChallenge([]byte(`{"nonce":"abc","extra-params":""}`))
	if err != nil || ch.Nonce != "abc" {
		t.Fatalf("good challenge: %+v, %v", ch, err)
	}
	for _, b := range []string{``, `null`, `{}`, `{"nonce":""}`, `{"nonce":1}`, `{"nonce":"a"}{}`, `{"nonce":"a\nb"}`,
		`{"nonce":"` + strings.Repeat("n", MaxNonce+1) + `"}`} {
		if _, err := ParseChallenge([]byte(b)); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseChallenge(%.40s) = %v, want ErrMalformed", b, err)
		}
	}
}

func TestParseAttestation(t *testing.T) {
	good := `{"init-data":null,"runtime-data":{"nonce":"n","tee-pubkey":{"kty":"EC","crv":"P-256","x":"X","y":"Y"}},"tee-evidence":{"primary_evidence":{"attestation_report":{}},"additional_evidence":""}}`
	a, err := ParseAttestation([]byte(good))
	if err != nil || a.RuntimeData.Nonce != "n" || a.RuntimeData.TeePubKey.Crv != "P-256" {
		t.Fatalf("good attestation: %+v, %v", a, err)
	}
	for name, b := range map[string]string{
		"no nonce":          strings.Replace(good, `"nonce":"n"`, `"nonce":""`, 1),
		"no key":            strings.Replace(good, `"kty":"EC"`, `"kty":""`, 1),
		"evidence a string": strings.Replace(good, `{"attestation_report":{}}`, `"report"`, 1),
		"evidence missing":  strings.Replace(good, `"primary_evidence":{"attestation_report":{}},`, ``, 1),
		"snake-case fields": strings.Replace(good, `"runtime-data"`, `"runtime_data"`, 1),
		"trailing data":     good + `{}`,
		"not an object":     `[]`,
	} {
		if _, err := ParseAttestation([]byte(b)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

// validNonce is what ParseChallenge promises about an accepted nonce.
func validNonce(t *testing.T, n string) {
	t.Helper()
	if n == "" || len(n) > MaxNonce || !utf8.ValidString(n) {
		t.Fatalf("accepted nonce %q", n)
	}
	for _, c := range n {
		if c < 0x20 || c == 0x7f {
			t.Fatalf("accepted nonce with control character %q", n)
		}
	}
}

func FuzzParseChallenge(f *testing.F) {
	for _, s := range []string{
		`{"nonce":"q2sTn5Ql1d0Zb2d8m4cR2w","extra-params":""}`,
		`{"nonce":"n","extra-params":{"a":[1,2]}}`,
		`{"nonce":""}`, `{"nonce":"\u0001"}`, `{"nonce":"\ud800"}`, `{"nonce":"a"} {}`, `{"nonce":null}`, `[]`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ch, err := ParseChallenge(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		validNonce(t, ch.Nonce)
		// An accepted nonce survives our own encoding and binds into
		// REPORT_DATA.
		again, err := json.Marshal(ch)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseChallenge(again)
		if err != nil || back.Nonce != ch.Nonce {
			t.Fatalf("re-encoded challenge %s: %+v, %v", again, back, err)
		}
		if _, err := ReportData(ch.Nonce, JWK{Kty: "EC", Crv: "P-256", X: "x", Y: "y"}, ""); err != nil {
			t.Fatalf("ReportData over an accepted nonce: %v", err)
		}
	})
}

func FuzzParseAttestation(f *testing.F) {
	good := `{"init-data":null,"runtime-data":{"nonce":"n","tee-pubkey":{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"X","y":"Y"}},"tee-evidence":{"primary_evidence":{"attestation_report":{"version":2}},"additional_evidence":""}}`
	for _, s := range []string{good, strings.Replace(good, `"kty":"EC"`, `"kty":"RSA","n":"AQAB","e":"AQAB"`, 1),
		`{"runtime-data":{"nonce":"n","tee-pubkey":{"kty":"EC"}},"tee-evidence":{"primary_evidence":"x"}}`,
		`{"runtime-data":null}`, `{}`, good + `x`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAttestation(b)
		if err != nil {
			if a != nil || !errors.Is(err, ErrMalformed) {
				t.Fatalf("rejection %v with %v", err, a)
			}
			return
		}
		validNonce(t, a.RuntimeData.Nonce)
		if a.RuntimeData.TeePubKey.Kty == "" {
			t.Fatal("accepted an attestation without a key type")
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(a.TeeEvidence.PrimaryEvidence, &obj); err != nil || len(a.TeeEvidence.PrimaryEvidence) > MaxEvidence {
			t.Fatalf("accepted primary_evidence that is not a bounded JSON object: %v", err)
		}
		if _, err := ReportData(a.RuntimeData.Nonce, a.RuntimeData.TeePubKey, a.TeeEvidence.AdditionalEvidence); err != nil {
			t.Fatalf("ReportData over an accepted attestation: %v", err)
		}
	})
}

func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{`{"version":"0.4.0","tee":"snp","extra-params":""}`, `{"version":"","tee":"snp"}`, `{"version":"0.4.0"}`, `1`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if r.Version == "" || r.Tee == "" {
			t.Fatalf("accepted %+v", r)
		}
	})
}
