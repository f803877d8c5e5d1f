"""The Helm chart renders what config/ declares: `make test-chart`.

* `helm template` with default values gives exactly the objects of `kubectl kustomize
  config/default`, less its Namespace (Helm stores a release in its namespace before creating
  anything, so the chart cannot create its own namespace by default); with `namespace.create=true`
  it gives all of them.
* With the ServiceMonitor, PrometheusRule and dashboard switched on, it gives the objects of
  `kubectl kustomize config/prometheus` and `config/grafana`.
* The chart's copies (files/) are byte for byte the sources (crds/, config/prometheus,
  config/grafana), and the chart's appVersion is Cargo.toml's version.
* The values do what values.yaml says (flags, image digest, CRD kept, refusals).

HELM and KUBECTL name the binaries (the Makefile passes the cached copies); a missing one fails.
"""

import os
import re
import subprocess
import unittest
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "pss-operator"
NAMESPACE = "pss-system"

COPIES = {
    CHART / "files" / "podsecurityprofiles.yaml": ROOT / "crds" / "podsecurityprofiles.yaml",
    CHART / "files" / "pss-operator.rules.yaml": ROOT / "config" / "prometheus" / "pss-operator.rules.yaml",
    CHART / "files" / "pss-operator-dashboard.json": ROOT / "config" / "grafana" / "pss-operator-dashboard.json",
    CHART / "files" / "openreports.io_reports.yaml": ROOT / "config" / "reports" / "crds" / "openreports.io_reports.yaml",
}


def tool(var):
    path = os.environ.get(var)
    if not path:
        raise RuntimeError(f"{var} is not set: run through `make test-chart`, which passes the cached {var.lower()}")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{var}={path} is not an executable")
    return path


def run(*cmd, check=True):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")
    return proc


def objects(text):
    """Keyed by (apiVersion, kind, namespace, name); a duplicate key is an error."""
    out = {}
    for doc in yaml.safe_load_all(text):
        if doc is None:
            continue
        meta = doc["metadata"]
        key = (doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"])
        assert key not in out, f"rendered twice: {key}"
        out[key] = doc
    return out


def helm_template(*args):
    return objects(run(tool("HELM"), "template", "pss-operator", str(CHART), "--namespace", NAMESPACE, *args).stdout)


def kustomize(folder):
    return objects(run(tool("KUBECTL"), "kustomize", str(ROOT / "config" / folder)).stdout)


def container(objs):
    deployment = objs[("apps/v1", "Deployment", NAMESPACE, "pss-operator")]
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, c


class ChartMatchesConfig(unittest.TestCase):
    maxDiff = None

    def assertSameObjects(self, got, want):
        self.assertEqual(sorted(got), sorted(want), "the chart and config/ render different sets of objects")
        for key in want:
            self.assertEqual(got[key], want[key], f"{key} differs between the chart and config/")

    def test_default_values_render_config_default_less_the_namespace(self):
        want = kustomize("default")
        ns = ("v1", "Namespace", "", NAMESPACE)
        self.assertIn(ns, want)
        del want[ns]
        self.assertSameObjects(helm_template(), want)

    def test_namespace_create_renders_all_of_config_default(self):
        self.assertSameObjects(helm_template("--set", "namespace.create=true"), kustomize("default"))

    def test_reports_are_config_reports(self):
        want = kustomize("reports")
        del want[("v1", "Namespace", "", NAMESPACE)]
        self.assertSameObjects(helm_template("--set", "reports.enabled=true"), want)

    def test_monitoring_objects_are_config_prometheus_and_grafana(self):
        got = helm_template("--set", "serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true")
        base = helm_template()
        extra = {k: v for k, v in got.items() if k not in base}
        want = kustomize("prometheus")
        # config/grafana is applied with -n <the sidecar's namespace>; the chart puts it in the release's.
        for (api, kind, _, name), doc in kustomize("grafana").items():
            doc["metadata"]["namespace"] = NAMESPACE
            want[(api, kind, NAMESPACE, name)] = doc
        self.assertSameObjects(extra, want)
        # and the dashboard text is the file itself, byte for byte
        cm = extra[("v1", "ConfigMap", NAMESPACE, "pss-operator-dashboard")]
        self.assertEqual(cm["data"]["pss-operator.json"], COPIES[CHART / "files" / "pss-operator-dashboard.json"].read_text())

    def test_copies_are_the_sources(self):
        for copy, source in COPIES.items():
            self.assertTrue(copy.exists(), f"{copy.relative_to(ROOT)} is missing: run `make chart-files`")
            self.assertEqual(copy.read_bytes(), source.read_bytes(),
                             f"{copy.relative_to(ROOT)} differs from {source.relative_to(ROOT)}: run `make chart-files`")

    def test_app_version_is_the_crate_version(self):
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        crate = re.search(r'(?m)^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text()).group(1)
        self.assertEqual(chart["appVersion"], crate)

    def test_lint_strict(self):
        for extra in ([], ["--set", "serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true,namespace.create=true,crds.keep=true,reports.enabled=true"]):
            out = run(tool("HELM"), "lint", "--strict", str(CHART), "--namespace", NAMESPACE, *extra).stdout
            self.assertIn("1 chart(s) linted, 0 chart(s) failed", out)


class Values(unittest.TestCase):
    def test_flags_from_values(self):
        objs = helm_template("--set", "excludeNamespaces={kube-system,tenant-x},leaderElection.leaseName=lease-a,"
                             "logFormat=text,logLevel=debug,metrics.port=9090,replicaCount=3",
                             "--set-json", 'extraArgs=["--some-flag=1"]')
        deployment, c = container(objs)
        self.assertEqual(deployment["spec"]["replicas"], 3)
        self.assertEqual(c["args"], ["run", "--metrics-addr=0.0.0.0:9090", "--health-addr=0.0.0.0:8081",
                                     "--log-format=text", "--leader-elect", "--lease-name=lease-a",
                                     "--admission-config=/etc/pss-operator/admission.yaml",
                                     "--exclude-namespaces=kube-system,tenant-x", "--some-flag=1"])
        self.assertEqual(c["ports"][0]["containerPort"], 9090)
        self.assertIn({"name": "RUST_LOG", "value": "debug"}, c["env"])
        svc = objs[("v1", "Service", NAMESPACE, "pss-operator-metrics")]
        self.assertEqual(svc["spec"]["ports"][0]["port"], 9090)

    def test_plain_metrics_certificate_and_admission_configuration(self):
        objs = helm_template("--set", "metrics.secure=false")
        _, c = container(objs)
        self.assertIn("--metrics-secure=false", c["args"])
        self.assertNotIn("health", [p["name"] for p in c["ports"]])
        self.assertFalse(any(k[1] == "ClusterRole" and k[3].endswith("-metrics-reader") for k in objs))
        objs = helm_template("--set", "metrics.certSecret=pss-tls,networkPolicy.enabled=true")
        deployment, c = container(objs)
        self.assertIn("--metrics-cert-dir=/etc/pss-operator/tls", c["args"])
        self.assertIn({"name": "metrics-cert", "secret": {"secretName": "pss-tls"}},
                      deployment["spec"]["template"]["spec"]["volumes"])
        self.assertIn(("networking.k8s.io/v1", "NetworkPolicy", NAMESPACE, "pss-operator-allow-metrics-traffic"), objs)
        config = "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\nexemptions:\n  namespaces: [legacy]\n"
        objs = helm_template("--set-string", "admissionConfiguration=" + config)
        cm = objs[("v1", "ConfigMap", NAMESPACE, "pss-operator-admission")]
        self.assertEqual(cm["data"]["admission.yaml"], config)

    def test_image_tag_and_digest(self):
        _, c = container(helm_template("--set", "image.repository=registry.example/pss-operator,image.tag=0.1.0"))
        self.assertEqual(c["image"], "registry.example/pss-operator:0.1.0")
        _, c = container(helm_template("--set", "image.tag=,image.digest=sha256:" + "a" * 64))
        self.assertEqual(c["image"], "pss-operator@sha256:" + "a" * 64)
        _, c = container(helm_template("--set", "image.tag="))
        self.assertEqual(c["image"], "pss-operator:" + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])

    def test_single_replica_without_leader_election(self):
        objs = helm_template("--set", "replicaCount=1,leaderElection.enabled=false")
        _, c = container(objs)
        self.assertNotIn("--leader-elect", c["args"])
        self.assertFalse([k for k in objs if k[1] in ("Role", "RoleBinding")], "no Lease role without leader election")

    def test_two_writers_refused(self):
        proc = run(tool("HELM"), "template", "x", str(CHART), "--set", "replicaCount=2,leaderElection.enabled=false", check=False)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("replicaCount > 1 needs leaderElection.enabled", proc.stderr)

    def test_crd_kept_on_uninstall_only_when_asked(self):
        crd_key = ("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", "podsecurityprofiles.pss-operator.io")
        plain = helm_template()[crd_key]
        kept = helm_template("--set", "crds.keep=true")[crd_key]
        self.assertNotIn("annotations", plain["metadata"])
        self.assertEqual(kept["metadata"].pop("annotations"), {"helm.sh/resource-policy": "keep"})
        self.assertEqual(kept, plain)
        self.assertNotIn(crd_key, helm_template("--set", "crds.install=false"))

    def test_reports_rbac_only_when_enabled(self):
        base = helm_template()
        self.assertFalse([k for k in base if k[3].endswith("-reports") or k[3] == "reports.openreports.io"])
        _, c = container(base)
        self.assertFalse([a for a in c["args"] if a.startswith("--reports")])
        objs = helm_template("--set", "reports.enabled=true,reports.format=policyreport,reports.installCRD=false")
        _, c = container(objs)
        self.assertEqual(c["args"][-1], "--reports=policyreport")
        self.assertNotIn(("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", "reports.openreports.io"), objs)
        role = objs[("rbac.authorization.k8s.io/v1", "ClusterRole", "", "pss-operator-reports")]
        self.assertEqual({r["apiGroups"][0]: r["verbs"] for r in role["rules"]},
                         {"openreports.io": ["list", "create", "patch", "delete"],
                          "wgpolicyk8s.io": ["list", "create", "patch", "delete"]})
        proc = run(tool("HELM"), "template", "x", str(CHART), "--set", "reports.enabled=true,reports.format=yes", check=False)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("reports.format must be auto, openreports or policyreport", proc.stderr)

    def test_monitoring_labels_and_dashboard_namespace(self):
        objs = helm_template("--set", "serviceMonitor.enabled=true,serviceMonitor.labels.release=kps,"
                             "grafanaDashboard.enabled=true,grafanaDashboard.namespace=monitoring")
        sm = objs[("monitoring.coreos.com/v1", "ServiceMonitor", NAMESPACE, "pss-operator")]
        self.assertEqual(sm["metadata"]["labels"], {"app.kubernetes.io/name": "pss-operator", "release": "kps"})
        self.assertIn(("v1", "ConfigMap", "monitoring", "pss-operator-dashboard"), objs)


if __name__ == "__main__":
    unittest.main()
