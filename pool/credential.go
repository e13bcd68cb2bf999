package pool

import (
	"crypto/rand"

	"github.com/pgsidecar/pgsidecar/internal/pgauth"
)

// ClientCredential lets a front end to the pool (such as pgsidecar's protocol proxy) check
// clients that log in with the user and password of DATABASE_URL without holding the password:
// it has the secrets PostgreSQL itself would store for that password.
type ClientCredential struct {
	User string
	// MD5 is "md5" + hex(md5(password + user)); empty when the pool has no password.
	MD5 string
	// SCRAM is a SCRAM-SHA-256 verifier with a fresh salt, as PostgreSQL stores it
	// ("SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>"); empty when the pool has no password.
	SCRAM string
}

// ClientCredential derives the pool user's ClientCredential from the password the pool logs in
// with now (DATABASE_URL, PGPASSWORD or the password file; after ReloadPassword, the one it
// took).
func (m *Manager) ClientCredential() (ClientCredential, error) {
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	return m.ClientCredentialWithSalt(salt)
}

// ClientCredentialWithSalt is ClientCredential with the SCRAM verifier's salt given. A front end
// that keeps accepting the previous password for a while after a ReloadPassword derives the new
// credential with the salt of the old one: both then open a SCRAM exchange alike, and the
// client's proof can be checked against either.
func (m *Manager) ClientCredentialWithSalt(salt []byte) (ClientCredential, error) {
	user, password := m.pool.Config().ConnConfig.User, m.currentPassword()
	c := ClientCredential{User: user}
	if password == "" {
		return c, nil
	}
	v, err := pgauth.SCRAMVerifierWithSalt(password, salt)
	if err != nil {
		return ClientCredential{}, m.scrubbed(err)
	}
	c.MD5, c.SCRAM = pgauth.MD5(password, user), v
	return c, nil
}
