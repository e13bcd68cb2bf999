package mixin

// RulesPath is where the generated rule file lives, relative to the repository root.
const RulesPath = "alerts/pgsidecar.rules.yml"

// ChartFiles is where the Helm chart keeps its copies of the rule file and the dashboards: a
// chart cannot read files outside its own directory.
const ChartFiles = "deploy/helm/pgsidecar/files/"

// DashboardPath is where a dashboard is written, relative to the repository root.
func DashboardPath(d *Dashboard) string { return "dashboards/" + d.UID + ".json" }

// Files renders every generated file, keyed by its path relative to the repository root.
func (c Config) Files() (map[string][]byte, error) {
	out := map[string][]byte{}
	rules, err := c.RulesYAML()
	if err != nil {
		return nil, err
	}
	out[RulesPath] = rules
	out[ChartFiles+"pgsidecar.rules.yml"] = rules
	lib, err := c.Libsonnet()
	if err != nil {
		return nil, err
	}
	out[LibsonnetPath] = lib
	for _, d := range c.Dashboards() {
		b, err := DashboardJSON(d)
		if err != nil {
			return nil, err
		}
		out[DashboardPath(d)] = b
		out[ChartFiles+DashboardPath(d)] = b
	}
	return out, nil
}
