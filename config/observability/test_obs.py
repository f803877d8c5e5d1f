"""Unit tests of obs.py's checks: each must catch what it claims to catch.
Run: python3 -m unittest discover -s config/observability -p 'test_*.py'"""

import copy
import io
import tempfile
import unittest
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import yaml

import obs

METRICS = """# HELP pss_violating_pods Running Pods that violate
# TYPE pss_violating_pods gauge
pss_violating_pods{mode="enforce",namespace="app",profile="apps"} 1
# HELP pss_reconcile_duration_seconds Duration of reconcile passes
# TYPE pss_reconcile_duration_seconds histogram
pss_reconcile_duration_seconds_bucket{controller="namespace",le="+Inf"} 1
pss_reconcile_duration_seconds_sum{controller="namespace"} 0.1
pss_reconcile_duration_seconds_count{controller="namespace"} 1
"""


class MetricNames(unittest.TestCase):
    def test_selectors_functions_keywords_and_label_lists(self):
        cases = {
            'sum by (namespace, le) (rate(pss_a_total{mode="x", ns=~"a|b"}[5m]))': {"pss_a_total"},
            "histogram_quantile(0.9, sum by (le) (rate(pss_d_bucket[$__rate_interval])))": {"pss_d_bucket"},
            'a_metric / on (namespace) group_left (profile) b_metric offset 10m': {"a_metric", "b_metric"},
            'x unless on (namespace) y or absent(up{job="pss-operator"})': {"x", "y", "up"},
            'count(pss_a{l="has {braces} and (parens)"} == 1) > bool 0': {"pss_a"},
            'label_replace(pss_u == 1, "problem", "unprotected: no profile", "", "")': {"pss_u"},
            '{__name__=~"pss_a|pss_b", profile=~".*"}': {"pss_a", "pss_b"},
        }
        for expr, want in cases.items():
            with self.subTest(expr=expr):
                self.assertEqual(obs.metric_names(expr), want)

    def test_exported_names_include_histogram_series(self):
        self.assertEqual(obs.exported_names(METRICS), {
            "pss_violating_pods", "pss_reconcile_duration_seconds",
            "pss_reconcile_duration_seconds_bucket", "pss_reconcile_duration_seconds_sum",
            "pss_reconcile_duration_seconds_count"})


class DashboardStructure(unittest.TestCase):
    def setUp(self):
        self.d = obs.load_dashboard()

    def assert_rejected(self, dashboard, message):
        with self.assertRaises(obs.Failure) as caught:
            obs.check_dashboard_structure(dashboard)
        self.assertIn(message, str(caught.exception))

    def test_the_committed_dashboard_passes(self):
        obs.check_dashboard_structure(self.d)

    def test_duplicate_panel_ids(self):
        d = copy.deepcopy(self.d)
        d["panels"][2]["id"] = d["panels"][1]["id"]
        self.assert_rejected(d, "duplicate panel ids")

    def test_missing_datasource_variable(self):
        d = copy.deepcopy(self.d)
        d["templating"]["list"] = [v for v in d["templating"]["list"] if v["name"] != "datasource"]
        self.assert_rejected(d, "variable `datasource`")

    def test_missing_namespace_variable(self):
        d = copy.deepcopy(self.d)
        d["templating"]["list"] = [v for v in d["templating"]["list"] if v["name"] != "namespace"]
        self.assert_rejected(d, "query variable `namespace`")

    def test_old_schema_version(self):
        d = copy.deepcopy(self.d)
        d["schemaVersion"] = 27
        self.assert_rejected(d, "schemaVersion")

    def test_hard_coded_datasource(self):
        d = copy.deepcopy(self.d)
        d["panels"][1]["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
        self.assert_rejected(d, "datasource must be")

    def test_overlapping_panels(self):
        d = copy.deepcopy(self.d)
        d["panels"][2]["gridPos"] = dict(d["panels"][1]["gridPos"])
        self.assert_rejected(d, "overlaps")

    def test_unknown_template_variable(self):
        with self.assertRaises(obs.Failure):
            obs.substitute('sum(pss_a{cluster=~"$cluster"})')

    def test_every_panel_query_is_found_with_variables_substituted(self):
        queries = obs.panel_queries(self.d)
        targets = sum(len(p.get("targets", [])) for p in obs.all_panels(self.d))
        self.assertEqual(len(queries), targets)
        for _, _, _, expr in queries:
            self.assertNotIn("$", expr)


class CheckNames(unittest.TestCase):
    def test_an_unexported_metric_is_reported_with_its_user(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "metrics.txt"
            path.write_text(METRICS)
            with self.assertRaises(obs.Failure) as caught:
                obs.cmd_check_names(SimpleNamespace(metrics_file=str(path)))
        text = str(caught.exception)
        self.assertIn("pss_label_drift_total: used by alert PssLabelDriftCorrected", text)
        self.assertIn("panel", text)
        self.assertNotIn("pss_violating_pods:", text)

    def test_not_a_metrics_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "metrics.txt"
            path.write_text("<html>404</html>")
            with self.assertRaises(obs.Failure):
                obs.cmd_check_names(SimpleNamespace(metrics_file=str(path)))


class Wiring(unittest.TestCase):
    def setUp(self):
        load = lambda p: yaml.safe_load(p.read_text())  # noqa: E731
        self.parts = [load(obs.MANAGER), load(obs.SERVICE), load(obs.SERVICE_MONITOR), obs.load_rules()]

    def errors(self, mutate):
        parts = copy.deepcopy(self.parts)
        mutate(*parts)
        return "\n".join(obs.wiring_errors(*parts))

    def test_the_committed_manifests_are_wired(self):
        self.assertEqual(self.errors(lambda *_: None), "")

    def test_wrong_port_name(self):
        def m(_d, _s, sm, _r):
            sm["spec"]["endpoints"][0]["port"] = "http-metrics"
        self.assertIn("not a Service port name", self.errors(m))

    def test_selector_not_matching_the_service(self):
        def m(_d, _s, sm, _r):
            sm["spec"]["selector"]["matchLabels"] = {"app": "pss-operator"}
        self.assertIn("ServiceMonitor selects app=pss-operator", self.errors(m))

    def test_job_name_differs_from_the_alerts(self):
        def m(_d, _s, sm, _r):
            del sm["spec"]["jobLabel"]
        self.assertIn("'pss-operator-metrics'", self.errors(m))

    def test_honor_labels_missing(self):
        def m(_d, _s, sm, _r):
            del sm["spec"]["endpoints"][0]["honorLabels"]
        self.assertIn("honorLabels", self.errors(m))

    def test_service_target_port_not_in_the_pod(self):
        def m(_d, s, _sm, _r):
            s["spec"]["ports"][0]["targetPort"] = "http"
        self.assertIn("not a container port", self.errors(m))

    def test_plain_http_scrape_of_the_secure_port(self):
        def m(_d, _s, sm, _r):
            del sm["spec"]["endpoints"][0]["scheme"]
            del sm["spec"]["endpoints"][0]["bearerTokenFile"]
        errors = self.errors(m)
        self.assertIn("scheme: https", errors)
        self.assertIn("401", errors)

    def test_plain_mode_needs_no_token(self):
        def m(d, _s, sm, _r):
            d["spec"]["template"]["spec"]["containers"][0]["args"].append("--metrics-secure=false")
            for key in ("scheme", "bearerTokenFile", "tlsConfig"):
                del sm["spec"]["endpoints"][0][key]
        self.assertEqual(self.errors(m), "")

    def test_probes_on_the_tls_port(self):
        def m(d, _s, _sm, _r):
            d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "metrics"
        self.assertIn("readinessProbe targets port 'metrics'", self.errors(m))

    def test_network_policy(self):
        load = lambda p: yaml.safe_load(p.read_text())  # noqa: E731
        parts = copy.deepcopy(self.parts)
        netpol = load(obs.NETWORK_POLICY)
        self.assertEqual(obs.wiring_errors(*parts, netpol), [])
        wide = copy.deepcopy(netpol)
        wide["spec"]["ingress"][0]["ports"].append({"port": 8081, "protocol": "TCP"})
        self.assertIn("opens port 8081", "\n".join(obs.wiring_errors(*parts, wide)))
        anyone = copy.deepcopy(netpol)
        del anyone["spec"]["ingress"][0]["from"]
        self.assertIn("every source", "\n".join(obs.wiring_errors(*parts, anyone)))
        other = copy.deepcopy(netpol)
        other["spec"]["podSelector"]["matchLabels"] = {"app": "x"}
        self.assertIn("not the manager's Pods", "\n".join(obs.wiring_errors(*parts, other)))

    def test_metrics_addr_moved(self):
        def m(d, _s, _sm, _r):
            args = d["spec"]["template"]["spec"]["containers"][0]["args"]
            args[:] = ["--metrics-addr=0.0.0.0:9090" if a.startswith("--metrics-addr") else a for a in args]
        self.assertIn("not the operator's --metrics-addr port", self.errors(m))


class FastRules(unittest.TestCase):
    def test_only_for_changes(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "fast.yaml"
            with redirect_stdout(io.StringIO()):
                obs.cmd_fast_rules(SimpleNamespace(out=str(out), for_="2s"))
            fast = yaml.safe_load(out.read_text())
        real = obs.load_rules()
        fast_rules = [r for g in fast["groups"] for r in g["rules"]]
        real_rules = [r for g in real["groups"] for r in g["rules"]]
        self.assertEqual(len(fast_rules), len(real_rules))
        for f, r in zip(fast_rules, real_rules):
            self.assertEqual(f.get("for"), "2s" if r.get("for") else None, r["alert"])
            self.assertEqual({k: v for k, v in f.items() if k != "for"},
                             {k: v for k, v in r.items() if k != "for"})


class Rules(unittest.TestCase):
    def test_every_alert_has_severity_summary_and_what_to_do(self):
        for group in obs.load_rules()["groups"]:
            for rule in group["rules"]:
                with self.subTest(alert=rule["alert"]):
                    self.assertIn(rule["labels"]["severity"], {"critical", "warning", "info"})
                    self.assertTrue(rule["annotations"]["summary"].strip())
                    self.assertIn("What to do:", rule["annotations"]["description"])


if __name__ == "__main__":
    unittest.main()
