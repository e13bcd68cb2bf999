package proxy

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"
)

// TestConfigValidateNamesTheFlag: every check is in Validate, and its errors name the flag and
// the value the way the binary reports them.
func TestConfigValidateNamesTheFlag(t *testing.T) {
	for _, tc := range []struct {
		tweak func(*Config)
		want  string
	}{
		{func(c *Config) {}, ""},
		{func(c *Config) { c.Listen = nil }, "--proxy.listen-address is not set"},
		{func(c *Config) { c.Auth = "kerberos" }, `--proxy.auth-method ("kerberos") must be one of scram-sha-256, md5, trust`},
		{func(c *Config) { c.MaxMessageSize = 0 }, "--proxy.max-message-size (0B) must be at least 1KiB"},
		{func(c *Config) { c.MaxClients = 0 }, "--proxy.max-client-connections (0) must be at least 1"},
		{func(c *Config) { c.TLSKeyFile = "key.pem" }, "--proxy.tls-cert-file and --proxy.tls-key-file must be given together"},
		{func(c *Config) { c.TLSCertFile, c.TLSKeyFile, c.TLS = "c", "k", &tls.Config{} }, "--proxy.tls-cert-file and TLS must not both be given"},
		{func(c *Config) { c.UsersFile, c.Users = "users.txt", map[string]string{"u": "p"} }, "--proxy.users-file and Users must not both be given"},
		{func(c *Config) { c.ResetTimeout = 0 }, "proxy ResetTimeout (0s) must be greater than 0"},
		{func(c *Config) { c.MaxStartup = -1 }, "--proxy.max-startup-connections (-1) must be at least 1"},
		{func(c *Config) { c.AuthFailureLogInterval = 0 }, "proxy AuthFailureLogInterval (0s) must be greater than 0"},
		{func(c *Config) { c.TLSMode = "sometimes" }, `--proxy.tls-mode ("sometimes") must be one of disable, allow, require`},
		{func(c *Config) { c.TLSMode = TLSRequire }, "--proxy.tls-mode=require needs a certificate: give --proxy.tls-cert-file and --proxy.tls-key-file"},
		{func(c *Config) { c.TLSMode, c.TLS = TLSRequire, &tls.Config{} }, ""},
		{func(c *Config) { c.PoolMode = "statement" }, `--proxy.pool-mode ("statement") must be session or transaction`},
		{func(c *Config) { c.MaxPreparedStatements = 0 }, "--proxy.max-prepared-statements (0) must be at least 1"},
		{func(c *Config) { c.PoolMode = PoolTransaction }, ""},
	} {
		c := DefaultConfig()
		c.Listen = []string{"127.0.0.1:0"}
		tc.tweak(&c)
		err := c.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Validate() = %v, want %q", err, tc.want)
		}
	}
}

func TestDefaultConfigIsTheFlagDefaults(t *testing.T) {
	c := DefaultConfig()
	if c.Auth != AuthSCRAM || c.MaxMessageSize != DefaultMaxMessageSize || c.MaxClients != 1000 ||
		c.StartupTimeout != 15*time.Second || c.ResetTimeout != 5*time.Second || len(c.Listen) != 0 ||
		c.AuthFailureLogInterval != 10*time.Second || c.TLSMode != "" || c.MaxStartup != 0 || c.maxStartup() != 100 ||
		c.PoolMode != PoolSession || c.MaxPreparedStatements != 200 {
		t.Fatalf("%+v", c)
	}
}

func TestMaxStartupRule(t *testing.T) {
	for clients, want := range map[int]int{1: 10, 10: 10, 20: 10, 50: 25, 200: 100, 1000: 100} {
		if got := (Config{MaxClients: clients}).maxStartup(); got != want {
			t.Errorf("MaxClients %d: max startup %d, want %d", clients, got, want)
		}
	}
	if got := (Config{MaxClients: 1000, MaxStartup: 3}).maxStartup(); got != 3 {
		t.Errorf("explicit MaxStartup 3: got %d", got)
	}
}
