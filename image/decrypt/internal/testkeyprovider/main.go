// Command testkeyprovider is an ocicrypt key provider for the tests of
// image/decrypt, speaking ocicrypt's "cmd" protocol the way CoCo's
// coco-keyprovider does for encryption: ocicrypt (here inside skopeo) runs
// it with a JSON request on stdin and reads a JSON answer from stdout.
//
// Only the "keywrap" operation is served. The request's
// keywrapparams.ec.Parameters["attestation-agent"] holds what followed
// "provider:attestation-agent:" on skopeo's --encryption-key, here
// "keyid=kbs:///<repo>/<type>/<tag>::keypath=<file with a 32-byte key>".
// The answer's keywrapresults.annotation is the JSON packet
// {"kid", "wrapped_data", "iv", "wrap_type": "A256GCM"} in which
// wrapped_data is AES-256-GCM of keywrapparams.optsdata under that key.
package main

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
)

type request struct {
	Op            string `json:"op"`
	KeyWrapParams struct {
		Ec struct {
			Parameters map[string][][]byte `json:"Parameters"`
		} `json:"ec"`
		OptsData []byte `json:"optsdata"`
	} `json:"keywrapparams"`
}

type response struct {
	KeyWrapResults struct {
		Annotation []byte `json:"annotation"`
	} `json:"keywrapresults"`
}

type packet struct {
	Kid         string `json:"kid"`
	WrappedData string `json:"wrapped_data"`
	IV          string `json:"iv"`
	WrapType    string `json:"wrap_type"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "testkeyprovider:", err)
		os.Exit(1)
	}
}

func run() error {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		return fmt.Errorf("reading the request: %w", err)
	}
	if req.Op != "keywrap" {
		return fmt.Errorf("operation %q not served", req.Op)
	}
	params := req.KeyWrapParams.Ec.Parameters["attestation-agent"]
	if len(params) != 1 {
		return fmt.Errorf("want one attestation-agent parameter, got %d", len(params))
	}
	kid, keyPath, err := parseParam(string(params[0]))
	if err != nil {
		return err
	}
	if len(req.KeyWrapParams.OptsData) == 0 {
		return errors.New("request carries no optsdata")
	}
	key, err := os.ReadFile(keyPath)
	if err != nil {
		return err
	}
	if len(key) != 32 {
		return fmt.Errorf("key file %s has %d bytes, want 32", keyPath, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return err
	}
	iv := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(iv); err != nil {
		return err
	}
	p := packet{
		Kid:         kid,
		WrappedData: base64.StdEncoding.EncodeToString(gcm.Seal(nil, iv, req.KeyWrapParams.OptsData, nil)),
		IV:          base64.StdEncoding.EncodeToString(iv),
		WrapType:    "A256GCM",
	}
	var resp response
	if resp.KeyWrapResults.Annotation, err = json.Marshal(p); err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(resp)
}

// parseParam splits "keyid=...::keypath=..." (either order).
func parseParam(s string) (kid, keyPath string, err error) {
	for _, kv := range strings.Split(s, "::") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "keyid":
			kid = v
		case "keypath":
			keyPath = v
		default:
			return "", "", fmt.Errorf("unknown parameter %q", k)
		}
	}
	if kid == "" || keyPath == "" {
		return "", "", errors.New("parameter needs both keyid= and keypath=")
	}
	return kid, keyPath, nil
}
