package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/cocoon-containers/cocoon/attestation"
	"github.com/cocoon-containers/cocoon/attestation/simulated"
	"github.com/cocoon-containers/cocoon/kbs-client/protocol"
	"github.com/cocoon-containers/cocoon/kbs-client/teekey"
)

// attestationBody is a well-formed /attest body with simulated evidence
// bound to nonce and a fresh key of alg.
func attestationBody(t testing.TB, nonce, alg string) []byte {
	t.Helper()
	p, err := simulated.New(simulated.Options{})
	if err != nil {
		t.Fatal(err)
	}
	k, err := teekey.New(alg)
	if err != nil {
		t.Fatal(err)
	}
	rd, err := protocol.ReportData(nonce, k.Public(), "")
	if err != nil {
		t.Fatal(err)
	}
	ev, err := p.GetEvidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	evJSON, err := attestation.MarshalTrusteeSNP(ev)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(protocol.Attestation{InitData: json.RawMessage("null"),
		RuntimeData: protocol.RuntimeData{Nonce: nonce, TeePubKey: k.Public()},
		TeeEvidence: protocol.TeeEvidence{PrimaryEvidence: evJSON}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeAttestation(t *testing.T) {
	good := attestationBody(t, "nonce-1", protocol.AlgECDH)
	att, ev, err := decodeAttestation(good)
	if err != nil || att.RuntimeData.Nonce != "nonce-1" || len(ev.Report) != attestation.ReportSize {
		t.Fatalf("good body: %v", err)
	}
	var v map[string]any
	json.Unmarshal(good, &v)
	v["runtime-data"].(map[string]any)["tee-pubkey"].(map[string]any)["crv"] = "P-384"
	badKey, _ := json.Marshal(v)
	if _, _, err := decodeAttestation(badKey); !errors.Is(err, teekey.ErrBadKey) {
		t.Errorf("P-384 tee-pubkey: %v, want ErrBadKey", err)
	}
	if _, _, err := decodeAttestation(bytes.Replace(good, []byte(`"primary_evidence":{`), []byte(`"primary_evidence":{"x":1,`), 1)); err != nil {
		t.Errorf("an unknown evidence field: %v", err)
	}
	if _, _, err := decodeAttestation([]byte(strings.Replace(string(good), `"attestation_report"`, `"report"`, 1))); err == nil {
		t.Error("evidence without attestation_report accepted")
	}
}

func FuzzDecodeAttestation(f *testing.F) {
	good := attestationBody(f, "q2sTn5Ql1d0Zb2d8m4cR2w", protocol.AlgECDH)
	f.Add(good)
	f.Add(attestationBody(f, "n", protocol.AlgRSAOAE))
	f.Add(good[:len(good)/2])
	f.Add(bytes.Replace(good, []byte(`"kty":"EC"`), []byte(`"kty":"RSA"`), 1))
	f.Add(bytes.Replace(good, []byte(`"cert_chain"`), []byte(`"cert_chain_x"`), 1))
	f.Add([]byte(`{"runtime-data":{"nonce":"n","tee-pubkey":{"kty":"EC"}},"tee-evidence":{"primary_evidence":{}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		att, ev, err := decodeAttestation(b)
		if err != nil {
			if att != nil || ev != nil {
				t.Fatal("a rejection returned values")
			}
			return
		}
		// What is accepted is a usable key, a full-size report that
		// encodes back to the same bytes, and REPORT_DATA can be computed.
		if _, _, err := teekey.PublicKey(att.RuntimeData.TeePubKey); err != nil {
			t.Fatalf("accepted key: %v", err)
		}
		if len(ev.Report) != attestation.ReportSize {
			t.Fatalf("accepted a report of %d bytes", len(ev.Report))
		}
		again, err := attestation.MarshalTrusteeSNP(ev)
		if err != nil {
			t.Fatalf("accepted evidence does not encode: %v", err)
		}
		ev2, err := attestation.ParseTrusteeSNP(again)
		if err != nil || !bytes.Equal(ev2.Report, ev.Report) {
			t.Fatalf("evidence does not survive a round trip: %v", err)
		}
		if _, err := protocol.ReportData(att.RuntimeData.Nonce, att.RuntimeData.TeePubKey, att.TeeEvidence.AdditionalEvidence); err != nil {
			t.Fatalf("ReportData: %v", err)
		}
	})
}
