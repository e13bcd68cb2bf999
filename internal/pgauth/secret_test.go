package pgauth

import (
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
)

func TestMD5(t *testing.T) {
	if got, want := MD5("hunter2", "app"), "md5ae683e9e3a46c249efd75afd69dd69d3"; got != want {
		t.Fatalf("MD5 = %q, want %q", got, want)
	}
}

// TestSCRAMVerifier recomputes the keys from the salt the verifier carries.
func TestSCRAMVerifier(t *testing.T) {
	v, err := SCRAMVerifier("pass\u00a0word")
	if err != nil {
		t.Fatal(err)
	}
	var iter int
	var salt64, keys string
	rest, ok := strings.CutPrefix(v, "SCRAM-SHA-256$")
	params, keys, ok2 := strings.Cut(rest, "$")
	if _, err := fmt.Sscanf(params, "%d:", &iter); !ok || !ok2 || err != nil || iter != SCRAMIterations {
		t.Fatalf("malformed verifier %q", v)
	}
	_, salt64, _ = strings.Cut(params, ":")
	salt, _ := base64.StdEncoding.DecodeString(salt64)
	// SASLprep maps the no-break space to a space.
	salted, _ := pbkdf2.Key(sha256.New, "pass word", salt, iter, sha256.Size)
	stored := sha256.Sum256(hmacSHA256(salted, "Client Key"))
	want := base64.StdEncoding.EncodeToString(stored[:]) + ":" + base64.StdEncoding.EncodeToString(hmacSHA256(salted, "Server Key"))
	if keys != want {
		t.Fatalf("verifier keys %q, want %q", keys, want)
	}
}
