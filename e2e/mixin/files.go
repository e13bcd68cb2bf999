package mixin

// RulesPath is where the generated rule file lives, relative to the repository root.
const RulesPath = "alerts/pgsidecar.rules.yml"

// Files renders every generated file, keyed by its path relative to the repository root.
func (c Config) Files() (map[string][]byte, error) {
	out := map[string][]byte{}
	rules, err := c.RulesYAML()
	if err != nil {
		return nil, err
	}
	out[RulesPath] = rules
	return out, nil
}
