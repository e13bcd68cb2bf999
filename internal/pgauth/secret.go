// Package pgauth derives PostgreSQL password secrets: the md5 hash and the SCRAM-SHA-256
// verifier that PostgreSQL stores in pg_authid, from which a server checks a client's login
// without knowing the password.
package pgauth

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
)

// SCRAMIterations is the PBKDF2 iteration count of the verifiers SCRAMVerifier makes,
// PostgreSQL's default (scram_iterations).
const SCRAMIterations = 4096

// MD5 returns PostgreSQL's md5 secret of a password: "md5" + hex(md5(password + user)).
func MD5(password, user string) string {
	sum := md5.Sum([]byte(password + user))
	return "md5" + hex.EncodeToString(sum[:])
}

// SCRAMVerifier derives a SCRAM-SHA-256 verifier from a password with a fresh random salt, in
// the form PostgreSQL stores: "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>". The
// password is SASLprep'd first, as PostgreSQL and libpq do, so non-ASCII passwords match theirs.
func SCRAMVerifier(password string) (string, error) {
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	return SCRAMVerifierWithSalt(password, salt)
}

// SCRAMVerifierWithSalt is SCRAMVerifier with a given salt. Verifiers of two passwords that
// share the salt and the iteration count open a SCRAM exchange alike, so a server can check the
// client's proof against either of them in one exchange.
func SCRAMVerifierWithSalt(password string, salt []byte) (string, error) {
	salted, err := pbkdf2.Key(sha256.New, SASLprep(password), salt, SCRAMIterations, sha256.Size)
	if err != nil {
		return "", err
	}
	clientKey := hmacSHA256(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", SCRAMIterations, b64(salt), b64(stored[:]),
		b64(hmacSHA256(salted, "Server Key"))), nil
}

func hmacSHA256(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}
