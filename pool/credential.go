package pool

import "github.com/pgsidecar/pgsidecar/internal/pgauth"

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

// ClientCredential derives the pool user's ClientCredential from the password pgx resolved for
// the pool (DATABASE_URL, PGPASSWORD or the password file).
func (m *Manager) ClientCredential() (ClientCredential, error) {
	cc := m.pool.Config().ConnConfig
	c := ClientCredential{User: cc.User}
	if cc.Password == "" {
		return c, nil
	}
	v, err := pgauth.SCRAMVerifier(cc.Password)
	if err != nil {
		return ClientCredential{}, m.scrubbed(err)
	}
	c.MD5, c.SCRAM = pgauth.MD5(cc.Password, cc.User), v
	return c, nil
}
