package cluster

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
)

// DefaultLabel is Config.Label's default.
const DefaultLabel = "timerd"

// maxLabelLen is memberlist's limit on a label, in bytes.
const maxLabelLen = 255

// validKeyLen checks the length of a gossip key: AES-128, -192 or -256.
func validKeyLen(n int) error {
	switch n {
	case 16, 24, 32:
		return nil
	}
	return fmt.Errorf("%w: must be 16, 24 or 32 bytes, got %d", ErrInvalidKey, n)
}

// DecodeKey decodes the contents of a gossip key file: the key in
// standard base64 (what `head -c 32 /dev/urandom | base64` writes),
// surrounding white space ignored; or else the raw key itself, 16, 24 or
// 32 bytes exactly. Base64 is tried first, so a raw key that happens to
// be valid base64 of 16, 24 or 32 bytes reads as that; write keys in
// base64. Errors wrap ErrInvalidKey and never quote the key.
func DecodeKey(data []byte) ([]byte, error) {
	if b, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(data))); err == nil && validKeyLen(len(b)) == nil {
		return b, nil
	}
	if validKeyLen(len(data)) == nil {
		return bytes.Clone(data), nil
	}
	return nil, fmt.Errorf("%w: want 16, 24 or 32 bytes, raw or in base64; got %d bytes that are neither", ErrInvalidKey, len(data))
}

// ReadKeyFile reads and decodes the gossip key file at path (see
// DecodeKey).
func ReadKeyFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cluster: gossip key: %w", err)
	}
	k, err := DecodeKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}
