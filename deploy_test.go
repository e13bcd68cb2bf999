package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/pgsidecar/pgsidecar/pool"
)

// exampleContainer is what TestDeploymentExamplesMatchTheBinary reads of a container.
type exampleContainer struct {
	Name  string
	Args  []string
	Env   []struct{ Name string }
	Ports []struct {
		Name          string
		ContainerPort int `yaml:"containerPort"`
	}
	LivenessProbe struct {
		HTTPGet struct{ Path, Port string } `yaml:"httpGet"`
	} `yaml:"livenessProbe"`
	ReadinessProbe struct {
		HTTPGet struct{ Path, Port string } `yaml:"httpGet"`
	} `yaml:"readinessProbe"`
}

// TestDeploymentExamplesMatchTheBinary reads the Kubernetes and systemd examples and checks that
// every flag and environment variable they give pgsidecar exists, so the examples cannot drift
// from the binary.
func TestDeploymentExamplesMatchTheBinary(t *testing.T) {
	k, _ := newApp(io.Discard, io.Discard)
	flags := map[string]bool{}
	envs := map[string]bool{}
	for _, f := range k.Model().Flags {
		flags["--"+f.Name] = true
		flags["--no-"+f.Name] = f.IsBoolFlag()
		if f.Envar != "" {
			envs[f.Envar] = true
		}
	}
	for _, s := range pool.Settings() {
		envs[s.Env] = true
	}
	checkArg := func(where, arg string) {
		name, _, _ := strings.Cut(arg, "=")
		if strings.HasPrefix(name, "--") && !flags[name] {
			t.Errorf("%s: unknown flag %s", where, name)
		}
	}

	files, _ := filepath.Glob("deploy/kubernetes/*.yaml")
	if len(files) == 0 {
		t.Fatal("no Kubernetes examples found")
	}
	sawSidecar := false
	for _, file := range files {
		f, err := os.Open(file)
		must(t, err)
		dec := yaml.NewDecoder(f)
		for {
			var doc struct {
				Kind string
				Spec struct {
					Template struct {
						Spec struct {
							Containers     []exampleContainer
							InitContainers []exampleContainer `yaml:"initContainers"`
						}
					}
				}
			}
			if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			// A native sidecar (Kubernetes 1.29+) is an init container.
			for _, c := range append(doc.Spec.Template.Spec.Containers, doc.Spec.Template.Spec.InitContainers...) {
				if c.Name != "pgsidecar" {
					continue
				}
				sawSidecar = true
				for _, a := range c.Args {
					checkArg(file, a)
				}
				for _, e := range c.Env {
					if !envs[e.Name] {
						t.Errorf("%s: unknown environment variable %s", file, e.Name)
					}
				}
				if c.LivenessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
					t.Errorf("%s: probes should use /healthz and /readyz", file)
				}
				// The probes send no credentials, so they must reach the listener without basic
				// auth: --web.probe-listen-address's port.
				probeArg := ""
				for _, a := range c.Args {
					if v, ok := strings.CutPrefix(a, "--web.probe-listen-address="); ok {
						probeArg = v
					}
				}
				for _, port := range []string{c.LivenessProbe.HTTPGet.Port, c.ReadinessProbe.HTTPGet.Port} {
					number := 0
					for _, p := range c.Ports {
						if p.Name == port {
							number = p.ContainerPort
						}
					}
					if probeArg == "" || !strings.HasSuffix(probeArg, ":"+strconv.Itoa(number)) {
						t.Errorf("%s: probe port %s (%d) is not --web.probe-listen-address (%q): with basic auth on, kubelet's probes would fail",
							file, port, number, probeArg)
					}
				}
			}
		}
		f.Close()
	}
	if !sawSidecar {
		t.Fatal("no pgsidecar container in the Kubernetes examples")
	}

	unit, err := os.ReadFile("deploy/systemd/pgsidecar.service")
	must(t, err)
	for _, line := range strings.Split(string(unit), "\n") {
		if cmd, ok := strings.CutPrefix(line, "ExecStart="); ok {
			for _, a := range strings.Fields(cmd)[1:] {
				checkArg("pgsidecar.service", a)
			}
		}
	}
}
