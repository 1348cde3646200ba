package rootfs

import (
	"crypto/sha256"
	"encoding/hex"
)

func sha(b []byte) [32]byte         { return sha256.Sum256(b) }
func hexs(b []byte) string          { return hex.EncodeToString(b) }
func hexd(s string) ([]byte, error) { return hex.DecodeString(s) }
