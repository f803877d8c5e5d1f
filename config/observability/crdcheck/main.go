// Command crdcheck decodes Prometheus Operator manifests strictly into the operator's own Go API
// types (github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring): an unknown or
// misspelt field, or a value of the wrong type, fails. Usage: crdcheck FILE...
package main

import (
	"bytes"
	"fmt"
	"os"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: crdcheck FILE...")
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[1:] {
		if err := check(path); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: %s: %v\n", path, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

func check(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	docs := 0
	for i, doc := range bytes.Split(data, []byte("\n---")) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			return fmt.Errorf("document %d: %w", i+1, err)
		}
		if meta.APIVersion != "monitoring.coreos.com/v1" {
			return fmt.Errorf("document %d: apiVersion %q, want monitoring.coreos.com/v1", i+1, meta.APIVersion)
		}
		var summary string
		switch meta.Kind {
		case "ServiceMonitor":
			var sm monitoringv1.ServiceMonitor
			if err := yaml.UnmarshalStrict(doc, &sm); err != nil {
				return fmt.Errorf("ServiceMonitor: %w", err)
			}
			if len(sm.Spec.Endpoints) == 0 {
				return fmt.Errorf("ServiceMonitor %s has no endpoints", sm.Name)
			}
			summary = fmt.Sprintf("ServiceMonitor %s/%s: %d endpoint(s), port %q", sm.Namespace, sm.Name,
				len(sm.Spec.Endpoints), sm.Spec.Endpoints[0].Port)
		case "PrometheusRule":
			var pr monitoringv1.PrometheusRule
			if err := yaml.UnmarshalStrict(doc, &pr); err != nil {
				return fmt.Errorf("PrometheusRule: %w", err)
			}
			n := 0
			for _, g := range pr.Spec.Groups {
				n += len(g.Rules)
			}
			if n == 0 {
				return fmt.Errorf("PrometheusRule %s has no rules", pr.Name)
			}
			summary = fmt.Sprintf("PrometheusRule %s/%s: %d group(s), %d rule(s)", pr.Namespace, pr.Name,
				len(pr.Spec.Groups), n)
		default:
			return fmt.Errorf("document %d: unexpected kind %q", i+1, meta.Kind)
		}
		docs++
		fmt.Printf("%s: %s decodes strictly into the Prometheus Operator's Go types\n", path, summary)
	}
	if docs == 0 {
		return fmt.Errorf("no documents")
	}
	return nil
}
