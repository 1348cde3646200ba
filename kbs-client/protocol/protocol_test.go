package protocol

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestCanonical(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"b":2,"a":1}`, `{"a":1,"b":2}`},
		{`{"nonce":"n","tee-pubkey":{"y":"Y","x":"X","kty":"EC"},"additional-evidence":""}`, `{"additional-evidence":"","nonce":"n","tee-pubkey":{"kty":"EC","x":"X","y":"Y"}}`},
		// RFC 8785 section 3.2.2 examples.
		{`[56, {"d": true, "10": null, "1": []}]`, `[56,{"1":[],"10":null,"d":true}]`},
		{`{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001]}`, `{"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27]}`},
		{`{"string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/"}`, `{"string":"€$\u000f\nA'B\"\\\\\"/"}`},
		// Sorting by UTF-16 code units, not UTF-8 bytes.
		{`{"\ud83d\ude00":1,"\ufb33":2}`, `{"😀":1,"דּ":2}`},
	}
	for _, tt := range tests {
		var v any
		d := json.NewDecoder(strings.NewReader(tt.in))
		d.UseNumber()
		if err := d.Decode(&v); err != nil {
			t.Fatal(err)
		}
		got, err := Canonical(v)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tt.want {
			t.Errorf("Canonical(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestReportDataBindsKeyAndNonce(t *testing.T) {
	k := JWK{Kty: "EC", Crv: "P-256", Alg: AlgECDH, X: "x", Y: "y"}
	a, err := ReportData("nonce-1", k, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, other := range []func() ([64]byte, error){
		func() ([64]byte, error) { return ReportData("nonce-2", k, "") },
		func() ([64]byte, error) { k2 := k; k2.X = "z"; return ReportData("nonce-1", k2, "") },
	} {
		b, _ := other()
		if a == b {
			t.Fatal("report data does not change with nonce or key")
		}
	}
	if [16]byte(a[48:]) != ([16]byte{}) || a == ([64]byte{}) {
		t.Fatalf("report data is not SHA-384 zero-padded: %x", a)
	}
}

func TestParseResourcePath(t *testing.T) {
	if got, err := ParseResourcePath("default/key/1"); err != nil || got != [3]string{"default", "key", "1"} {
		t.Fatalf("good path: %v %v", got, err)
	}
	for _, p := range []string{"", "a/b", "a/b/c/d", "../b/c", "a/../c", "a/b/..", "a/./c", "a/b%2Fc/d", "/a/b/c", "a/b/c/", "a/b c/d", "a/.hidden/c"} {
		if _, err := ParseResourcePath(p); !errors.Is(err, ErrBadPath) {
			t.Errorf("ParseResourcePath(%q) = %v, want ErrBadPath", p, err)
		}
	}
}

func FuzzCanonical(f *testing.F) {
	f.Add(`{"a":[1,2,{"b":"c"}]}`)
	f.Fuzz(func(t *testing.T, s string) {
		var v any
		d := json.NewDecoder(strings.NewReader(s))
		d.UseNumber()
		if d.Decode(&v) != nil {
			return
		}
		out, err := Canonical(v)
		if err != nil {
			return
		}
		var back any
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("canonical output is not JSON: %s", out)
		}
	})
}

func TestResourceURIPath(t *testing.T) {
	if p, ok, err := ResourceURIPath("kbs:///default/key/1"); !ok || err != nil || p != "default/key/1" {
		t.Errorf("kbs:///default/key/1: %q %v %v", p, ok, err)
	}
	for _, notURI := range []string{"/etc/policy.json", "kbs://default/key/1", "https://kbs/default/key/1", ""} {
		if _, ok, _ := ResourceURIPath(notURI); ok {
			t.Errorf("%q taken for a kbs:/// URI", notURI)
		}
	}
	for _, bad := range []string{"kbs:///default/../1", "kbs:///default/key", "kbs:///a/b/c/d", "kbs:///"} {
		if _, ok, err := ResourceURIPath(bad); !ok || err == nil {
			t.Errorf("%q: ok %v err %v, want a kbs:/// URI with a bad path", bad, ok, err)
		}
	}
}
