// Package kube checks the Kubernetes package: the Helm chart under deploy/helm, rendered with
// Helm's Go SDK, and the manifests under deploy/kubernetes, each object decoded strictly into
// its Go type (an unknown or misspelt field fails).
package kube

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/pgsidecar/pgsidecar/mixin"
)

const root = "../.."

var chartDir = filepath.Join(root, "deploy", "helm", "pgsidecar")

// object is one decoded Kubernetes object.
type object struct {
	source string // file and document
	kind   string
	obj    any
}

// newObject returns an empty Go object of apiVersion and kind.
func newObject(apiVersion, kind string) (any, error) {
	switch apiVersion + " " + kind {
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, nil
	case "v1 Service":
		return &corev1.Service{}, nil
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1 Secret":
		return &corev1.Secret{}, nil
	case "monitoring.coreos.com/v1 PodMonitor":
		return &monitoringv1.PodMonitor{}, nil
	case "monitoring.coreos.com/v1 ServiceMonitor":
		return &monitoringv1.ServiceMonitor{}, nil
	case "monitoring.coreos.com/v1 PrometheusRule":
		return &monitoringv1.PrometheusRule{}, nil
	}
	return nil, fmt.Errorf("no Go type for %s %s", apiVersion, kind)
}

// strict decodes YAML into v: duplicate keys and fields v's type does not have fail.
func strict(doc []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("more than one value")
	}
	return nil
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

// decodeAll decodes every object of a multi-document YAML text.
func decodeAll(t *testing.T, source, text string) []object {
	t.Helper()
	var out []object
	for i, doc := range docSeparator.Split(text, -1) {
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("%s, document %d: %v", source, i, err)
		}
		if head.Kind == "" && head.APIVersion == "" {
			if strings.TrimSpace(stripComments(doc)) != "" {
				t.Errorf("%s, document %d: neither apiVersion nor kind:\n%s", source, i, doc)
			}
			continue
		}
		obj, err := newObject(head.APIVersion, head.Kind)
		if err != nil {
			t.Fatalf("%s, document %d: %v", source, i, err)
		}
		if err := strict([]byte(doc), obj); err != nil {
			t.Fatalf("%s, document %d (%s): %v", source, i, head.Kind, err)
		}
		out = append(out, object{source: fmt.Sprintf("%s#%d", source, i), kind: head.Kind, obj: obj})
	}
	return out
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// render renders ch with Helm's engine as `helm template` would for an install, with the given
// values (nil: the chart's defaults), and decodes every object.
func render(t *testing.T, ch *chart.Chart, vals map[string]any) []object {
	t.Helper()
	rv, err := util.ToRenderValues(ch, vals, common.ReleaseOptions{Name: "pg", Namespace: "db", IsInstall: true}, common.DefaultCapabilities)
	if err != nil {
		t.Fatal(err)
	}
	files, err := engine.Render(ch, rv)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []object
	for _, n := range names {
		if strings.HasSuffix(n, ".tpl") || strings.HasSuffix(n, "NOTES.txt") {
			continue
		}
		out = append(out, decodeAll(t, n, files[n])...)
	}
	return out
}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

func readValues(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v, err := loader.LoadValues(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return v
}

func kinds(objs []object) map[string]int {
	out := map[string]int{}
	for _, o := range objs {
		out[o.kind]++
	}
	return out
}

// TestStrictDecodingRejectsUnknownFields: the decoding the other tests rely on fails on a
// misspelt field, so a typo in the chart or a manifest cannot pass them.
func TestStrictDecodingRejectsUnknownFields(t *testing.T) {
	for _, doc := range []string{
		"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replica: 3}\n",
		"apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata: {name: x}\nspec: {podMetricEndpoints: []}\n",
		"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\ndata: {c: d}\n",
	} {
		var head struct{ APIVersion, Kind string }
		_ = yaml.Unmarshal([]byte(doc), &head)
		obj, err := newObject(head.APIVersion, head.Kind)
		if err != nil {
			t.Fatal(err)
		}
		if err := strict([]byte(doc), obj); err == nil {
			t.Errorf("decoded without error:\n%s", doc)
		}
	}
}

// TestChartRenders renders the chart under its defaults and each values file of
// testdata/values, and checks what each one installs.
func TestChartRenders(t *testing.T) {
	ch := loadChart(t)
	files, _ := filepath.Glob("testdata/values/*.yaml")
	if len(files) < 3 {
		t.Fatalf("values files: %v", files)
	}
	// One ConfigMap per committed dashboard.
	dashboards, _ := filepath.Glob(filepath.Join(root, "dashboards", "*.json"))
	if len(dashboards) < 2 {
		t.Fatalf("dashboards: %v", dashboards)
	}
	want := map[string]map[string]int{
		"sidecar-podmonitor.yaml":      {"PodMonitor": 1, "PrometheusRule": 1, "ConfigMap": len(dashboards)},
		"exporter-servicemonitor.yaml": {"Deployment": 1, "Service": 1, "ServiceMonitor": 1, "PrometheusRule": 1, "ConfigMap": len(dashboards)},
		"nothing-optional.yaml":        {},
	}
	cases := map[string]map[string]any{}
	for _, f := range files {
		cases[filepath.Base(f)] = readValues(t, f)
	}
	for name, vals := range cases {
		t.Run(name, func(t *testing.T) {
			objs := render(t, ch, vals)
			if got := kinds(objs); !reflect.DeepEqual(got, want[name]) {
				t.Errorf("objects %v, want %v", got, want[name])
			}
			for _, o := range objs {
				switch x := o.obj.(type) {
				case *monitoringv1.PrometheusRule:
					checkRules(t, x)
				case *corev1.ConfigMap:
					checkDashboard(t, x)
				case *monitoringv1.PodMonitor:
					if name == "sidecar-podmonitor.yaml" {
						if x.Spec.Selector.MatchLabels["app"] != "pos-api" {
							t.Errorf("PodMonitor selects %v, want the app's pods", x.Spec.Selector.MatchLabels)
						}
						ep := x.Spec.PodMetricsEndpoints
						if len(ep) != 1 || len(ep[0].RelabelConfigs) != 1 || ep[0].RelabelConfigs[0].Replacement == nil ||
							*ep[0].RelabelConfigs[0].Replacement != "pos-primary" {
							t.Errorf("PodMonitor endpoints %+v: want the cluster label set to pos-primary", ep)
						}
					}
				case *appsv1.Deployment:
					c := x.Spec.Template.Spec.Containers
					if len(c) != 1 || !contains(c[0].Args, "--collector.scope=all") || !contains(c[0].Args, "--collector.statements") {
						t.Errorf("the exporter's args %v: want --collector.scope=all and the extra args", c[0].Args)
					}
					if c[0].Env[0].ValueFrom.SecretKeyRef.Name != "reporting-db" {
						t.Errorf("the exporter reads DATABASE_URL from %+v", c[0].Env[0].ValueFrom.SecretKeyRef)
					}
				}
			}
		})
	}
}

// TestChartRefusesAMonitorOfNothing: a ServiceMonitor needs the exporter's Service, and a
// PodMonitor the labels of the pods that run the sidecar (the chart's defaults give neither);
// the chart says so rather than installing a monitor that scrapes nothing.
func TestChartRefusesAMonitorOfNothing(t *testing.T) {
	ch := loadChart(t)
	if err := ch.Validate(); err != nil {
		t.Fatalf("Chart.yaml: %v", err)
	}
	for _, tc := range []struct {
		vals map[string]any
		want string
	}{
		{nil, "monitor.podSelector"},
		{map[string]any{"monitor": map[string]any{"kind": "ServiceMonitor"}}, "exporter.enabled"},
		{map[string]any{"monitor": map[string]any{"kind": "Probe"}}, "PodMonitor, ServiceMonitor or empty"},
	} {
		rv, err := util.ToRenderValues(ch, tc.vals, common.ReleaseOptions{Name: "pg", Namespace: "db", IsInstall: true}, common.DefaultCapabilities)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := engine.Render(ch, rv); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("values %v: render error %v, want one naming %s", tc.vals, err, tc.want)
		}
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// checkRules: the PrometheusRule holds exactly the groups of alerts/pgsidecar.rules.yml.
func checkRules(t *testing.T, r *monitoringv1.PrometheusRule) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, mixin.RulesPath))
	if err != nil {
		t.Fatal(err)
	}
	var want monitoringv1.PrometheusRuleSpec
	if err := strict(b, &want); err != nil {
		t.Fatalf("%s as a PrometheusRule spec: %v", mixin.RulesPath, err)
	}
	if len(want.Groups) == 0 {
		t.Fatal("no rule groups")
	}
	if !reflect.DeepEqual(r.Spec, want) {
		g, _ := json.MarshalIndent(r.Spec, "", " ")
		t.Errorf("the PrometheusRule is not %s:\n%s", mixin.RulesPath, g)
	}
}

// checkDashboard: a dashboard ConfigMap carries the sidecar's label and exactly a committed
// dashboard.
func checkDashboard(t *testing.T, cm *corev1.ConfigMap) {
	t.Helper()
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("ConfigMap %s lacks the label grafana_dashboard=1: %v", cm.Name, cm.Labels)
	}
	if len(cm.Data) != 1 {
		t.Fatalf("ConfigMap %s holds %d files", cm.Name, len(cm.Data))
	}
	for name, data := range cm.Data {
		want, err := os.ReadFile(filepath.Join(root, "dashboards", name))
		if err != nil {
			t.Fatalf("ConfigMap %s: %v", cm.Name, err)
		}
		if data != string(want) {
			t.Errorf("ConfigMap %s: %s is not dashboards/%s", cm.Name, name, name)
		}
	}
}

// checkNativeSidecar: the pod runs pgsidecar as a native sidecar (an init container that keeps
// running) whose startup probe is a TCP connect to the proxy's port, and the app beside it.
func checkNativeSidecar(t *testing.T, where string, pod corev1.PodSpec) {
	t.Helper()
	if len(pod.InitContainers) != 1 || pod.InitContainers[0].Name != "pgsidecar" {
		t.Fatalf("%s: init containers %v, want pgsidecar", where, pod.InitContainers)
	}
	c := pod.InitContainers[0]
	if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("%s: pgsidecar's restartPolicy %v, want Always (a native sidecar)", where, c.RestartPolicy)
	}
	checkProxyProbe(t, where, c)
	for _, a := range pod.Containers {
		if a.Name == "pgsidecar" {
			t.Errorf("%s: pgsidecar is also a regular container", where)
		}
	}
	if len(pod.Containers) == 0 {
		t.Errorf("%s: no app container", where)
	}
}

// checkProxyProbe: the startup probe connects to the port the proxy listens on, on every
// address (the kubelet connects to the pod's address, not its loopback).
func checkProxyProbe(t *testing.T, where string, c corev1.Container) {
	t.Helper()
	p := c.StartupProbe
	if p == nil || p.TCPSocket == nil {
		t.Fatalf("%s: pgsidecar has no TCP startup probe", where)
	}
	port := p.TCPSocket.Port.IntVal
	for _, cp := range c.Ports {
		if cp.Name == p.TCPSocket.Port.StrVal {
			port = cp.ContainerPort
		}
	}
	if port == 0 || !contains(c.Args, fmt.Sprintf("--proxy.listen-address=:%d", port)) {
		t.Errorf("%s: the startup probe's port %v (%d) is not where the proxy listens on all addresses: %v", where, p.TCPSocket.Port, port, c.Args)
	}
}

var referenceRow = regexp.MustCompile("(?m)^\\| `(--[a-z0-9.-]+)` \\| `([A-Z0-9_]+)`")

// checkDocumented: every flag and environment variable the sidecar template gives pgsidecar is
// in docs/reference.md (which a test of the main module keeps equal to the binary's), so the
// template cannot drift from the binary.
func checkDocumented(t *testing.T, c corev1.Container) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "docs", "reference.md"))
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, m := range referenceRow.FindAllStringSubmatch(string(b), -1) {
		known[m[1]], known[m[2]] = true, true
	}
	if len(known) < 50 {
		t.Fatalf("only %d flags and variables read from docs/reference.md", len(known))
	}
	for _, a := range c.Args {
		if name, _, _ := strings.Cut(a, "="); !known[name] {
			t.Errorf("the sidecar template passes %s, which is not in docs/reference.md", name)
		}
	}
	for _, e := range c.Env {
		if !known[e.Name] {
			t.Errorf("the sidecar template sets %s, which is not in docs/reference.md", e.Name)
		}
	}
}

// TestChartSidecarTemplate renders an app chart that has this chart as a dependency and
// includes pgsidecar.sidecar, as a native sidecar and as a classic container.
func TestChartSidecarTemplate(t *testing.T) {
	for _, native := range []bool{true, false} {
		t.Run(fmt.Sprintf("native=%v", native), func(t *testing.T) {
			app, err := loader.Load("testdata/app")
			if err != nil {
				t.Fatal(err)
			}
			app.AddDependency(loadChart(t))
			objs := render(t, app, map[string]any{"pgsidecar": map[string]any{"sidecar": map[string]any{"native": native}}})
			var deployments []*appsv1.Deployment
			for _, o := range objs {
				if d, ok := o.obj.(*appsv1.Deployment); ok {
					deployments = append(deployments, d)
				}
			}
			if len(deployments) != 1 || deployments[0].Name != "pos-api" {
				t.Fatalf("deployments %v, want the app's alone", deployments)
			}
			pod := deployments[0].Spec.Template.Spec
			for _, c := range append(pod.InitContainers, pod.Containers...) {
				if c.Name == "pgsidecar" {
					checkDocumented(t, c)
				}
			}
			if native {
				checkNativeSidecar(t, "app chart", pod)
				return
			}
			if len(pod.InitContainers) != 0 || len(pod.Containers) != 2 || pod.Containers[1].Name != "pgsidecar" {
				t.Fatalf("classic: init containers %d, containers %v", len(pod.InitContainers), pod.Containers)
			}
			if pod.Containers[1].RestartPolicy != nil {
				t.Errorf("classic: a container-level restartPolicy %v", *pod.Containers[1].RestartPolicy)
			}
			if env := pod.Containers[1].Env[0]; env.ValueFrom.SecretKeyRef.Name != "pos-database" {
				t.Errorf("the sidecar reads DATABASE_URL from %+v, want the app's values", env.ValueFrom.SecretKeyRef)
			}
		})
	}
}

// TestKubernetesManifests decodes every file of deploy/kubernetes strictly, and checks the
// native sidecar manifest.
func TestKubernetesManifests(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(root, "deploy", "kubernetes", "*.yaml"))
	if len(files) < 3 {
		t.Fatalf("manifests: %v", files)
	}
	sawNative := false
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range decodeAll(t, filepath.Base(f), string(b)) {
			d, ok := o.obj.(*appsv1.Deployment)
			if !ok || len(d.Spec.Template.Spec.InitContainers) == 0 {
				continue
			}
			sawNative = true
			checkNativeSidecar(t, o.source, d.Spec.Template.Spec)
		}
	}
	if !sawNative {
		t.Error("no manifest runs pgsidecar as a native sidecar")
	}
}
