#!/usr/bin/env python3
"""Cluster-scale benchmark of pss-operator (issue 6, benchmarks 2-4). Standard library only.

On a private local control plane (e2e/scripts/cluster-up.sh, with an audit policy that logs only
the operator's ServiceAccount so its API requests can be counted), it:

  1. creates NAMESPACES namespaces (tiers web 50 %, batch 30 %, strict 10 %, none 10 %), four
     PodSecurityProfiles selecting 90 % of them, and Pods up to PODS in total (they stay Pending:
     no scheduler, no kubelet) -- restricted-compliant, baseline-only and privileged Pods;
  2. starts the release operator as its ServiceAccount with only config/rbac and measures the time
     from start to its initial lists (its log) and to complete status + /metrics (the expected
     totals, computed from the Pods listed, seen in /metrics and in every profile's status), peak
     RSS (VmHWM), CPU and API requests (audit log);
  3. idles IDLE seconds: CPU and API requests (writes must be zero);
  4. latency: DRIFTS label removals at DRIFT_RATE/s, time until a namespace watch sees the label
     restored; PRIV_SAMPLES new privileged Pods, time until /metrics counts them.

Run it again with --reuse on the same --cluster-dir with more --pods to grow the same cluster
(the operator is restarted, so the start measurements repeat at the new size).
Prints a JSON summary on stdout (also written to --out); progress on stderr.
"""

import argparse
import base64
import calendar
import http.client
import json
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import zlib
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SA_USER = "system:serviceaccount:pss-system:pss-operator"
PSA = "pod-security.kubernetes.io/"
LEDGER = "pss-operator.io/applied"
TICK = os.sysconf("SC_CLK_TCK")
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def log(msg):
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---- HTTP -----------------------------------------------------------------------------------------
class Api:
    """A tiny Kubernetes client: one keep-alive HTTPS connection per thread."""

    def __init__(self, server, ca, cert=None, key=None, token=None):
        u = urllib.parse.urlparse(server)
        self.host, self.port = u.hostname, u.port
        self.ctx = ssl.create_default_context(cafile=ca)
        if cert:
            self.ctx.load_cert_chain(cert, key)
        self.token = token
        self.local = threading.local()

    def conn(self):
        c = getattr(self.local, "c", None)
        if c is None:
            c = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=120)
            self.local.c = c
        return c

    def request(self, method, path, body=None, ctype="application/json", accept="application/json"):
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = ctype
            if not isinstance(body, (bytes, str)):
                body = json.dumps(body)
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        for attempt in range(5):
            try:
                c = self.conn()
                c.request(method, path, body=body, headers=headers)
                r = c.getresponse()
                data = r.read()
                if r.status == 429 or r.status >= 500:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                return r.status, data
            except (OSError, http.client.HTTPException):
                self.local.c = None
                time.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"{method} {path}: no answer after 5 tries")

    def json(self, method, path, body=None, ok=(200, 201), **kw):
        status, data = self.request(method, path, body, **kw)
        if status not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {data[:300]!r}")
        return json.loads(data) if data else None

    def stream(self, path):
        """A separate connection for a watch; returns the response to readline() from."""
        c = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=600)
        c.request("GET", path, headers={"Accept": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError(f"watch {path}: HTTP {r.status}")
        return r


def list_all(api, path, meta_only=False):
    items, cont = [], ""
    accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json" if meta_only else "application/json"
    while True:
        sep = "&" if "?" in path else "?"
        q = f"{path}{sep}limit=5000" + (f"&continue={urllib.parse.quote(cont)}" if cont else "")
        page = api.json("GET", q, accept=accept)
        items += page.get("items") or []
        cont = page.get("metadata", {}).get("continue")
        if not cont:
            return items, page["metadata"].get("resourceVersion")


# ---- the workload ---------------------------------------------------------------------------------
def tier(i):
    r = i % 10
    return "web" if r < 5 else "batch" if r < 8 else "strict" if r == 8 else "none"


def ns_name(i):
    return f"bench-{i:04d}"


PROFILES = [
    # web: enforce baseline, audit + warn restricted.
    {"name": "web", "selector": {"matchLabels": {"bench/tier": "web"}}, "priority": 10,
     "enforce": "baseline", "audit": "restricted", "warn": "restricted"},
    # batch: privileged Pods allowed, audit baseline, warn restricted.
    {"name": "batch", "selector": {"matchLabels": {"bench/tier": "batch"}}, "priority": 10,
     "enforce": "privileged", "audit": "baseline", "warn": "restricted"},
    # strict: restricted once compliant (WhenCompliant: pending while baseline-only Pods run).
    {"name": "strict", "selector": {"matchLabels": {"bench/tier": "strict"}}, "priority": 10,
     "enforce": "restricted", "rollout": "WhenCompliant"},
    # everything with a tier, lower priority: governs nothing the others govern (shadowed).
    {"name": "floor", "selector": {"matchExpressions": [{"key": "bench/tier", "operator": "In",
                                                         "values": ["web", "batch", "strict"]}]},
     "priority": 0, "enforce": "baseline", "audit": "baseline"},
]


def profile_object(p):
    spec = {"namespaceSelector": p["selector"], "priority": p["priority"]}
    for mode in ("enforce", "audit", "warn"):
        if mode in p:
            spec[mode] = {"level": p[mode], "version": "latest"}
    if "rollout" in p:
        spec["rollout"] = p["rollout"]
    return {"apiVersion": "pss-operator.io/v1alpha1", "kind": "PodSecurityProfile",
            "metadata": {"name": p["name"]}, "spec": spec}


def pod_kind(ns_index, k):
    """c: restricted-compliant, b: baseline-only (fails restricted), p: privileged (fails baseline)."""
    r = k % 4
    if r == 0:
        return "c"
    if r == 3 and tier(ns_index) in ("batch", "none"):
        return "p"
    return "b"


# --templates: how many templates (distinct container names and images) Pods are spread over (0:
# every Pod's container is "app" of one image, so the Pods come in three shapes, one per kind). The
# issue's shape (a) is ~15,000 templates, shape (b) every Pod distinct (a number above --pods).
TEMPLATES = 0


def pod_object(name, kind, ns=""):
    t = zlib.crc32(f'{ns}/{name}'.encode()) % TEMPLATES if TEMPLATES else None
    container = {
        "name": f"app-{t}" if TEMPLATES else "app",
        "image": f"registry.example/app-{t}:1.2.3" if TEMPLATES else "registry.example/app:1.2.3",
        "ports": [{"containerPort": 8080}],
        "env": [{"name": "MODE", "value": "bench"}, {"name": "LOG_LEVEL", "value": "info"}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
    }
    spec = {"containers": [container], "automountServiceAccountToken": False}
    if kind == "c":
        spec["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
        container["securityContext"] = {"allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]}}
    elif kind == "p":
        container["securityContext"] = {"privileged": True}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "bench", "bench/kind": kind}},
            "spec": spec}


# --workloads: Pod-template workloads spread round-robin over the namespaces, none of which runs a
# Pod (Deployments, ReplicaSets, StatefulSets and ReplicationControllers at 0 replicas, suspended
# Jobs and CronJobs, DaemonSets with no Node to target), so the Pod counts stay --pods. Each
# Deployment also gets its ReplicaSet from kube-controller-manager (folded into it by the operator).
WORKLOAD_KINDS = [  # (share of 10, apiVersion, kind, plural)
    (6, "apps/v1", "Deployment", "deployments"),
    (1, "batch/v1", "CronJob", "cronjobs"),
    (1, "apps/v1", "StatefulSet", "statefulsets"),
    (1, "batch/v1", "Job", "jobs"),
    (1, "apps/v1", "DaemonSet", "daemonsets"),
]


def workload_kind(w):
    r = w % 10
    for share, api_version, kind, plural in WORKLOAD_KINDS:
        if r < share:
            return api_version, kind, plural
        r -= share
    raise AssertionError("shares add up to 10")


def workload_object(w, ns_index):
    api_version, kind, plural = workload_kind(w)
    name = f"wl-{w:05d}"
    pod = pod_object(name, pod_kind(ns_index, w), ns_name(ns_index))
    template = {"metadata": {"labels": {"app": name}}, "spec": pod["spec"]}
    selector = {"matchLabels": {"app": name}}
    if kind in ("Job", "CronJob"):
        template["spec"] = dict(template["spec"], restartPolicy="Never")
    spec = {
        "Deployment": {"replicas": 0, "selector": selector, "template": template},
        "StatefulSet": {"replicas": 0, "serviceName": name, "selector": selector, "template": template},
        "DaemonSet": {"selector": selector, "template": template},
        "Job": {"suspend": True, "template": template},
        "CronJob": {"schedule": "0 3 * * *", "suspend": True, "jobTemplate": {"spec": {"template": template}}},
    }[kind]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{ns_name(ns_index)}/{plural}"
    return path, {"apiVersion": api_version, "kind": kind,
                  "metadata": {"name": name, "namespace": ns_name(ns_index)}, "spec": spec}


def expected_totals(pods_by_ns, n_namespaces):
    """What the operator must report, from the Pods that exist (name -> kind per namespace)."""
    priv = 0
    viol = {}  # (profile, mode) -> violating pods
    for i in range(n_namespaces):
        kinds = pods_by_ns.get(ns_name(i), {}).values()
        b = sum(1 for k in kinds if k == "b")
        p = sum(1 for k in kinds if k == "p")
        priv += p
        t = tier(i)
        if t == "web":
            for m, v in (("enforce", p), ("audit", b + p), ("warn", b + p)):
                viol[("web", m)] = viol.get(("web", m), 0) + v
        elif t == "batch":
            for m, v in (("enforce", 0), ("audit", p), ("warn", b + p)):
                viol[("batch", m)] = viol.get(("batch", m), 0) + v
    return {"privileged_containers": priv, "violating": viol}


# ---- operator process -----------------------------------------------------------------------------
def proc_stats(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return {"cpu_s": cpu, "rss_mb": rss, "hwm_mb": hwm}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http_get(port, path, timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def rfc3339(ts):
    """Seconds since the epoch of an RFC 3339 UTC timestamp (audit log: microseconds, Z)."""
    base, _, frac = ts.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + (float("0." + frac) if frac else 0.0)


class Audit:
    """The operator's requests, from the apiserver audit log (only its ServiceAccount is logged)."""

    def __init__(self, path):
        self.path = path

    def size(self):
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            return 0

    def count(self, start, end=None):
        seen = {}
        last_ns_write = 0.0
        if not os.path.exists(self.path):
            return {"total": 0, "writes": 0, "by_verb_resource": {}}
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(end - start)
        for line in data.splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("user", {}).get("username") != SA_USER:
                continue
            ref = e.get("objectRef") or {}
            res = ref.get("resource", "?") + ("/" + ref["subresource"] if ref.get("subresource") else "")
            seen[e["auditID"]] = (e["verb"], res)
            if res == "namespaces" and e["verb"] in WRITE_VERBS and e.get("stageTimestamp"):
                last_ns_write = max(last_ns_write, rfc3339(e["stageTimestamp"]))
        by = {}
        for verb, res in seen.values():
            by[f"{verb} {res}"] = by.get(f"{verb} {res}", 0) + 1
        writes = sum(n for k, n in by.items() if k.split()[0] in WRITE_VERBS)
        out = {"total": len(seen), "writes": writes, "by_verb_resource": dict(sorted(by.items()))}
        if last_ns_write:
            out["last_namespace_write"] = last_ns_write
        return out


# ---- metrics parsing ------------------------------------------------------------------------------
LINE = re.compile(r'^(pss_[a-z_]+)\{([^}]*)\} (\S+)$', re.M)
LABEL = re.compile(r'(\w+)="([^"]*)"')


def metric_totals(text):
    priv = 0
    viol = {}
    for name, labels, value in LINE.findall(text):
        if name == "pss_privileged_containers":
            priv += int(float(value))
        elif name == "pss_violating_pods":
            l = dict(LABEL.findall(labels))
            key = (l["profile"], l["mode"])
            viol[key] = viol.get(key, 0) + int(float(value))
    return priv, viol


# ---- the benchmark --------------------------------------------------------------------------------
class Bench:
    def __init__(self, a):
        self.a = a
        self.dir = os.path.abspath(a.cluster_dir)
        self.results = {"config": vars(a).copy()}

    # cluster
    def cluster_up(self):
        policy = os.path.join(os.path.dirname(self.dir.rstrip("/")), os.path.basename(self.dir) + "-audit-policy.yaml")
        with open(policy, "w") as f:
            f.write("apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n"
                    f"- level: Metadata\n  users: [\"{SA_USER}\"]\n- level: None\n")
        self.audit_path = os.path.join(os.path.dirname(self.dir.rstrip("/")), os.path.basename(self.dir) + "-audit.log")
        # kube-controller-manager's default client QPS (20) takes ~10 minutes to create the default
        # ServiceAccounts of 10,000 namespaces and the ReplicaSets of 15,000 Deployments.
        env = dict(os.environ, PSS_CLUSTER_DIR=self.dir,
                   PSS_KCM_EXTRA_ARGS="--kube-api-qps=500 --kube-api-burst=1000",
                   PSS_APISERVER_EXTRA_ARGS=f"--audit-policy-file={policy} --audit-log-path={self.audit_path} "
                                            "--audit-log-maxsize=0")
        out = subprocess.run([os.path.join(ROOT, "e2e/scripts/cluster-up.sh")], env=env, check=True,
                             stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
        self.kubeconfig = out
        self.kubectl = os.path.join(self.dir, "bin", "kubectl")
        with open(out) as f:
            server = re.search(r"server: (\S+)", f.read()).group(1)
        pki = os.path.join(self.dir, "pki")
        self.server, self.ca = server, os.path.join(pki, "ca.crt")
        self.admin = Api(server, self.ca, os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
        self.audit = Audit(self.audit_path)
        log(f"control plane up: {server}")

    def kubectl_run(self, *args, input=None):
        return subprocess.run([self.kubectl, "--kubeconfig", self.kubeconfig, *args], input=input,
                              check=True, stdout=subprocess.PIPE, text=True).stdout

    def install(self):
        crd = subprocess.run([self.a.operator, "crd"], check=True, stdout=subprocess.PIPE, text=True).stdout
        self.kubectl_run("apply", "--server-side", "-f", "-", input=crd)
        self.kubectl_run("wait", "--for=condition=Established", "crd/podsecurityprofiles.pss-operator.io")
        self.admin.json("POST", "/api/v1/namespaces", {"metadata": {"name": "pss-system"}}, ok=(201, 409))
        self.kubectl_run("apply", "-k", os.path.join(ROOT, "config/rbac"))
        for p in PROFILES:
            self.kubectl_run("apply", "--server-side", "-f", "-", input=json.dumps(profile_object(p)))

    def token_kubeconfig(self):
        for _ in range(60):
            try:
                token = self.kubectl_run("create", "token", "-n", "pss-system", "pss-operator",
                                         "--duration=24h").strip()
                break
            except subprocess.CalledProcessError:
                time.sleep(1)
        else:
            raise RuntimeError("no token for pss-system/pss-operator")
        path = os.path.join(self.dir, "operator.kubeconfig")
        with open(self.ca, "rb") as f:
            ca = base64.b64encode(f.read()).decode()
        cfg = {"apiVersion": "v1", "kind": "Config",
               "clusters": [{"name": "c", "cluster": {"server": self.server, "certificate-authority-data": ca}}],
               "users": [{"name": "u", "user": {"token": token}}],
               "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}], "current-context": "c"}
        with open(path, "w") as f:
            json.dump(cfg, f)
        os.chmod(path, 0o600)
        return path

    def populate(self):
        a = self.a
        existing, _ = list_all(self.admin, "/api/v1/namespaces", meta_only=True)
        have = {n["metadata"]["name"] for n in existing}
        todo = [i for i in range(a.namespaces) if ns_name(i) not in have]
        t0 = time.time()
        with ThreadPoolExecutor(a.concurrency) as ex:
            list(ex.map(lambda i: self.admin.json(
                "POST", "/api/v1/namespaces",
                {"metadata": {"name": ns_name(i), "labels": {"bench/tier": tier(i)} if tier(i) != "none" else {}}},
                ok=(201, 409)), todo))
        namespaces_created = len(todo)
        log(f"{len(todo)} namespaces created in {time.time() - t0:.1f}s; waiting for their default ServiceAccounts")
        while True:
            sas, _ = list_all(self.admin, "/api/v1/serviceaccounts?fieldSelector=metadata.name%3Ddefault", meta_only=True)
            n = sum(1 for s in sas if s["metadata"]["namespace"].startswith("bench-"))
            if n >= a.namespaces:
                break
            time.sleep(1)
        if a.replace_pods:
            self.delete_pods()
        pods = self.pods_by_ns()
        # Round-robin over namespaces: Pod j lives in namespace j % N, its kind by its rank there.
        # Every slot is visited: on a cluster grown to more namespaces the existing Pods sit at
        # other slots of the new layout (starting at the number already there left some out).
        todo = []
        for j in range(a.pods):
            i = j % a.namespaces
            k = j // a.namespaces
            name = f"pod-{k:05d}"
            if name in pods.get(ns_name(i), {}):
                continue
            todo.append((i, name, pod_kind(i, k)))
        t0 = time.time()
        failed = []

        def create(item):
            i, name, kind = item
            status, data = self.admin.request("POST", f"/api/v1/namespaces/{ns_name(i)}/pods",
                                              pod_object(name, kind, ns_name(i)))
            if status not in (201, 409):
                failed.append((ns_name(i), name, status, data[:200]))

        with ThreadPoolExecutor(a.concurrency) as ex:
            for n, _ in enumerate(ex.map(create, todo), 1):
                if n % 10000 == 0:
                    log(f"  {n}/{len(todo)} Pods created ({n / (time.time() - t0):.0f}/s)")
        dt = time.time() - t0
        if failed:
            raise RuntimeError(f"{len(failed)} Pods refused, e.g. {failed[:3]}")
        log(f"{len(todo)} Pods created in {dt:.1f}s ({len(todo) / max(dt, 1e-9):.0f}/s, load {loadavg()})")
        self.results["populate"] = {"namespaces_created": namespaces_created, "pods_created": len(todo),
                                    "pods_create_s": round(dt, 1)}
        if a.workloads:
            self.populate_workloads()

    def populate_workloads(self):
        a = self.a
        t0 = time.time()
        failed = []
        # A rerun on the same cluster creates only what is missing.
        have = set()
        for _, api_version, _, plural in WORKLOAD_KINDS:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            items, _ = list_all(self.admin, f"{base}/{plural}", meta_only=True)
            have |= {(plural, i["metadata"]["namespace"], i["metadata"]["name"]) for i in items}

        def create(w):
            path, obj = workload_object(w, w % a.namespaces)
            if (path.rsplit("/", 1)[1], obj["metadata"]["namespace"], obj["metadata"]["name"]) in have:
                return
            status, data = self.admin.request("POST", path, obj)
            if status not in (201, 409):
                failed.append((path, obj["metadata"]["name"], status, data[:200]))

        with ThreadPoolExecutor(a.concurrency) as ex:
            list(ex.map(create, range(a.workloads)))
        if failed:
            raise RuntimeError(f"{len(failed)} workloads refused, e.g. {failed[:3]}")
        deployments = sum(1 for w in range(a.workloads) if workload_kind(w)[1] == "Deployment")
        log(f"{a.workloads} workloads created in {time.time() - t0:.1f}s; waiting for the "
            f"ReplicaSets of {deployments} Deployments (kube-controller-manager)")
        while True:
            rs, _ = list_all(self.admin, "/apis/apps/v1/replicasets", meta_only=True)
            n = sum(1 for r in rs if r["metadata"]["namespace"].startswith("bench-"))
            if n >= deployments:
                break
            time.sleep(2)
        log(f"workloads ready in {time.time() - t0:.1f}s (load {loadavg()})")
        self.results["populate"]["workloads"] = a.workloads

    def delete_pods(self):
        """Deletes every bench Pod (they run on no Node, so they go at once), to re-create them in
        another shape (--templates) on the same namespaces."""
        t0 = time.time()
        namespaces = sorted(self.pods_by_ns())
        with ThreadPoolExecutor(self.a.concurrency) as ex:
            list(ex.map(lambda ns: self.admin.request("DELETE", f"/api/v1/namespaces/{ns}/pods"), namespaces))
        while self.pods_by_ns():
            time.sleep(2)
        log(f"Pods of {len(namespaces)} namespaces deleted in {time.time() - t0:.1f}s")

    def pods_by_ns(self):
        pods, _ = list_all(self.admin, "/api/v1/pods", meta_only=True)
        out = {}
        for p in pods:
            m = p["metadata"]
            if m["namespace"].startswith("bench-"):
                out.setdefault(m["namespace"], {})[m["name"]] = (m.get("labels") or {}).get("bench/kind", "b")
        return out

    def strip_labels(self):
        """Removes the PSA labels from every bench namespace and the profiles' status: the next start
        labels them all again and writes every status, as on a fresh cluster."""
        nss, _ = list_all(self.admin, "/api/v1/namespaces", meta_only=True)
        todo = [n["metadata"]["name"] for n in nss if n["metadata"]["name"].startswith("bench-")
                and (any(k.startswith(PSA) for k in (n["metadata"].get("labels") or {}))
                     or LEDGER in (n["metadata"].get("annotations") or {}))]
        # The operator's ledger record goes too: a fresh cluster has none (with it, the stripped
        # labels would be drift that happened while the operator was down).
        patch = json.dumps({"metadata": {"labels": {PSA + m + s: None for m in ("enforce", "audit", "warn")
                                                    for s in ("", "-version")},
                                         "annotations": {LEDGER: None}}})
        with ThreadPoolExecutor(self.a.concurrency) as ex:
            list(ex.map(lambda ns: self.admin.json("PATCH", f"/api/v1/namespaces/{ns}", patch,
                                                   ctype="application/merge-patch+json"), todo))
        # And the profiles' status, so the status the operator writes is timed too.
        for p in PROFILES:
            self.admin.json("PATCH", f"/apis/pss-operator.io/v1alpha1/podsecurityprofiles/{p['name']}/status",
                            json.dumps({"status": None}), ctype="application/merge-patch+json")
        log(f"PSA labels and ledger records removed from {len(todo)} namespaces; profile status cleared")
        self.results["labels_stripped"] = len(todo)

    # operator
    def start_operator(self, kubeconfig):
        self.metrics_port = free_port()
        self.oplog = os.path.join(self.dir, f"operator-{int(time.time())}.log")
        env = dict(os.environ, KUBECONFIG=kubeconfig, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        out = open(self.oplog, "w")
        t0 = time.time()
        self.op = subprocess.Popen([self.a.operator, "run", "--metrics-secure=false",
                                    "--metrics-addr", f"127.0.0.1:{self.metrics_port}",
                                    "--log-format", "json", "--operator-namespace", "pss-system",
                                    *self.a.operator_args.split()],
                                   env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        log(f"operator pid {self.op.pid}, metrics :{self.metrics_port}, log {self.oplog}")
        return t0

    def stop_operator(self):
        if getattr(self, "op", None) and self.op.poll() is None:
            self.op.send_signal(signal.SIGTERM)
            try:
                self.op.wait(10)
            except subprocess.TimeoutExpired:
                self.op.kill()
                self.op.wait()

    def log_time(self, message):
        with open(self.oplog) as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e.get("fields", {}).get("message") == message:
                    ts = e["timestamp"]
                    # 2026-11-26T23:59:59.123456Z
                    base, frac = ts.rstrip("Z").split(".") if "." in ts else (ts.rstrip("Z"), "0")
                    t = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
                    return t + float("0." + frac), e["fields"]
        return None, None

    def scrape_sizes(self):
        """One scrape as Prometheus asks for it (gzip) and one plain: bytes, series, time."""
        out = {}
        for enc in ("gzip", "identity"):
            c = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=30)
            try:
                t = time.time()
                c.request("GET", "/metrics", headers={"Accept-Encoding": enc})
                r = c.getresponse()
                body = r.read()
                dt = time.time() - t
                gz = r.getheader("Content-Encoding") == "gzip"
            finally:
                c.close()
            text = (zlib.decompress(body, 16 + zlib.MAX_WBITS) if gz else body).decode()
            out[f"scrape_{enc}"] = {"ms": round(1000 * dt, 1), "bytes": len(body), "gzip": gz,
                                    "text_bytes": len(text),
                                    "series": sum(1 for l in text.splitlines() if l and not l.startswith("#"))}
        return out

    def metrics_text(self):
        """One scrape as Prometheus makes it: gzip asked for (and decompressed here)."""
        c = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=30)
        try:
            c.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
            r = c.getresponse()
            body = r.read()
            if r.status != 200:
                return ""
            if r.getheader("Content-Encoding") == "gzip":
                body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
            return body.decode()
        finally:
            c.close()

    def statuses_complete(self, exp):
        profiles = self.admin.json("GET", "/apis/pss-operator.io/v1alpha1/podsecurityprofiles")["items"]
        got = {}
        for p in profiles:
            st = p.get("status") or {}
            if st.get("observedGeneration") != p["metadata"].get("generation"):
                return False
            for mode in ("enforce", "audit", "warn"):
                if st.get(mode):
                    got[(p["metadata"]["name"], mode)] = st[mode].get("violatingPods", 0)
        return all(got.get(k, 0) == v for k, v in exp["violating"].items())

    def apiserver_pid(self):
        with open(os.path.join(self.dir, "pids", "kube-apiserver.pid")) as f:
            return int(f.read().split()[0])

    def measure_start(self, kubeconfig, exp):
        # kube-apiserver's peak RSS from here on (writing 5 to clear_refs resets VmHWM): what the
        # operator's initial lists cost the server.
        api_pid = self.apiserver_pid()
        api_before = proc_stats(api_pid)
        try:
            with open(f"/proc/{api_pid}/clear_refs", "w") as f:
                f.write("5")
            api_hwm_reset = True
        except OSError:
            api_hwm_reset = False
        a0 = self.audit.size()
        t0 = self.start_operator(kubeconfig)
        metrics_done = status_done = None
        scrape_s = []
        while time.time() - t0 < self.a.start_timeout:
            if self.op.poll() is not None:
                raise RuntimeError(f"operator exited; see {self.oplog}")
            now = time.time()
            if metrics_done is None:
                try:
                    s0 = time.time()
                    text = self.metrics_text()
                    scrape_s.append(time.time() - s0)
                except OSError:
                    text = ""
                priv, viol = metric_totals(text)
                if priv == exp["privileged_containers"] and all(
                        viol.get(k, 0) == v for k, v in exp["violating"].items()) and text:
                    metrics_done = now
            if status_done is None and self.statuses_complete(exp):
                status_done = now
            if metrics_done and status_done:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"status/metrics incomplete after {self.a.start_timeout}s; see {self.oplog}")
        time.sleep(2)  # let the pass that wrote the status finish its requests
        st = proc_stats(self.op.pid)
        api_st = proc_stats(api_pid)
        if self.a.strip_labels:
            # Every stripped namespace labelled again: the last namespace write of the start, once
            # the operator's requests have gone quiet.
            quiet_since, size, deadline = time.time(), self.audit.size(), time.time() + 300
            while time.time() - quiet_since < 5 and time.time() < deadline:
                time.sleep(0.5)
                if self.audit.size() != size:
                    quiet_since, size = time.time(), self.audit.size()
        lists = {}
        for what in ("namespaces", "podsecurityprofiles"):
            t, _ = self.log_time(f"list of {what} complete")
            lists[what] = t
        t_pods, fields = self.log_time("list of pods complete")
        t_pass, pass_fields = self.log_time("first pass complete")
        lists["pods"] = t_pods
        t_lists = max((t for t in lists.values() if t), default=None)
        if t_lists is None:
            raise RuntimeError(f"no 'list of ... complete' lines in {self.oplog} (an older operator?)")
        done = max(metrics_done, status_done)
        audit = self.audit.count(a0)
        last_ns_write = audit.pop("last_namespace_write", None)
        r = {
            "load": loadavg(),
            "initial_lists_done_s": round(t_lists - t0, 2),
            "pod_list_done_s": round(t_pods - t0, 2),
            "pod_index_ms": fields.get("index_ms") if fields else None,
            "first_pass_done_s": round(t_pass - t0, 2) if t_pass else None,
            "first_pass_ms": pass_fields.get("pass_ms") if pass_fields else None,
            "metrics_complete_s": round(metrics_done - t0, 2),
            "status_complete_s": round(status_done - t0, 2),
            "complete_after_lists_s": round(done - t_lists, 2),
            "metrics_scrape_ms_median": round(1000 * statistics.median(scrape_s), 1) if scrape_s else None,
            "peak_rss_mb": round(st["hwm_mb"], 1),
            "rss_mb": round(st["rss_mb"], 1),
            "cpu_s": round(st["cpu_s"], 2),
            "api_requests": audit,
            "apiserver_rss_before_mb": round(api_before["rss_mb"], 1),
            "apiserver_peak_rss_mb": round(api_st["hwm_mb"], 1) if api_hwm_reset else None,
        }
        if self.a.strip_labels and last_ns_write:
            # Labels go on while the Pods are still listed: negative when done before the lists.
            r["all_labelled_after_lists_s"] = round(last_ns_write - t_lists, 2)
            r["all_labelled_after_start_s"] = round(last_ns_write - t0, 2)
        r.update(self.scrape_sizes())
        profiles = self.admin.json("GET", "/apis/pss-operator.io/v1alpha1/podsecurityprofiles")["items"]
        r["status_bytes"] = {p["metadata"]["name"]: len(json.dumps(p.get("status") or {}, separators=(",", ":")))
                             for p in profiles}
        log(f"start: {json.dumps(r)}")
        return r

    def measure_idle(self):
        # Start once the start's tail (Events are posted in the background) has gone quiet.
        quiet_since, size, deadline = time.time(), self.audit.size(), time.time() + 120
        while time.time() - quiet_since < 5 and time.time() < deadline:
            time.sleep(0.5)
            if self.audit.size() != size:
                quiet_since, size = time.time(), self.audit.size()
        a0, s0, t0 = self.audit.size(), proc_stats(self.op.pid), time.time()
        log(f"idle for {self.a.idle}s")
        time.sleep(self.a.idle)
        # The audit log is written in batches: wait for the last second's entries.
        s1, t1 = proc_stats(self.op.pid), time.time()
        time.sleep(3)
        r = {"load": loadavg(), "seconds": round(t1 - t0, 1), "cpu_s": round(s1["cpu_s"] - s0["cpu_s"], 2),
             "cpu_pct": round(100 * (s1["cpu_s"] - s0["cpu_s"]) / (t1 - t0), 3),
             "rss_mb": round(s1["rss_mb"], 1), "api_requests": self.audit.count(a0)}
        log(f"idle: {json.dumps(r)}")
        return r

    def measure_drift(self):
        a = self.a
        nss = [ns_name(i) for i in range(a.namespaces) if tier(i) == "web"]
        _, rv = list_all(self.admin, "/api/v1/namespaces?labelSelector=bench%2Ftier%3Dweb", meta_only=True)
        label = PSA + "enforce"
        pending = {}  # ns -> (t_write, rv_of_our_write)
        lat = []
        lock = threading.Condition()
        stop = threading.Event()

        def watch():
            r = self.admin.stream(f"/api/v1/namespaces?watch=1&labelSelector=bench%2Ftier%3Dweb&resourceVersion={rv}")
            while not stop.is_set():
                line = r.readline()
                if not line:
                    break
                now = time.time()
                ev = json.loads(line)
                obj = ev.get("object", {})
                m = obj.get("metadata", {})
                with lock:
                    p = pending.get(m.get("name"))
                    if p and int(m["resourceVersion"]) > p[1] and (m.get("labels") or {}).get(label) == "baseline":
                        lat.append(now - p[0])
                        del pending[m["name"]]
                        lock.notify_all()

        th = threading.Thread(target=watch, daemon=True)
        th.start()
        time.sleep(1)
        a0 = self.audit.size()
        period = 1.0 / a.drift_rate
        start = time.time()
        patch = json.dumps({"metadata": {"labels": {label: None}}})

        def drift(n):
            # Each write at its own due time (a pool, so a slow PATCH does not lower the rate).
            d = start + n * period - time.time()
            if d > 0:
                time.sleep(d)
            ns = nss[n % len(nss)]
            with lock:
                while ns in pending:  # still waiting for the previous repair of this namespace
                    lock.wait(1)
            t = time.time()
            obj = self.admin.json("PATCH", f"/api/v1/namespaces/{ns}", patch, ctype="application/merge-patch+json")
            with lock:
                if (obj["metadata"].get("labels") or {}).get(label) is None:
                    pending[ns] = (t, int(obj["metadata"]["resourceVersion"]))

        with ThreadPoolExecutor(8) as ex:
            list(ex.map(drift, range(a.drifts)))
        sent = time.time() - start
        deadline = time.time() + 60
        with lock:
            while pending and time.time() < deadline:
                lock.wait(1)
            lost = len(pending)
        stop.set()
        r = self.latency_summary(lat)
        r.update({"load": loadavg(), "drifts": a.drifts, "rate_target": a.drift_rate,
                  "rate_achieved": round(a.drifts / sent, 1), "not_repaired_within_60s": lost,
                  "api_requests": self.audit.count(a0)})
        log(f"drift: {json.dumps({k: v for k, v in r.items() if k != 'api_requests'})}")
        return r

    @staticmethod
    def latency_summary(lat):
        if not lat:
            return {"samples": 0}
        s = sorted(lat)
        q = lambda f: round(1000 * s[min(len(s) - 1, int(f * len(s)))], 1)
        return {"samples": len(s), "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99),
                "max_ms": round(1000 * s[-1], 1)}

    def measure_privileged(self):
        a = self.a
        nss = [ns_name(i) for i in range(a.namespaces) if tier(i) == "batch"]
        lat, scrape = [], []
        pat = lambda ns: re.compile(r'^pss_privileged_containers\{namespace="%s"\} (\d+)$' % ns, re.M)
        for n in range(a.priv_samples):
            ns = nss[n % len(nss)]
            text = self.metrics_text()
            m = pat(ns).search(text)
            before = int(m.group(1)) if m else 0
            name = f"lat-{int(time.time() * 1000)}-{n}"
            t = time.time()
            self.admin.json("POST", f"/api/v1/namespaces/{ns}/pods", pod_object(name, "p", ns))
            while time.time() - t < 30:
                s0 = time.time()
                text = self.metrics_text()
                scrape.append(time.time() - s0)
                m = pat(ns).search(text)
                if m and int(m.group(1)) > before:
                    # When the scrape that shows it has completed (an upper bound).
                    lat.append(time.time() - t)
                    break
                time.sleep(0.05)  # do not hog the operator with back-to-back scrapes
            time.sleep(0.05)
        r = self.latency_summary(lat)
        r.update({"load": loadavg(), "requested": a.priv_samples,
                  "metrics_scrape_ms_median": round(1000 * statistics.median(scrape), 1) if scrape else None,
                  "metrics_bytes": len(text)})
        log(f"privileged pod: {json.dumps(r)}")
        return r

    def run(self):
        a = self.a
        self.results["machine"] = {"nproc": os.cpu_count(), "load_start": loadavg(),
                                   "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.cluster_up()
        self.install()
        self.populate()
        if a.setup_only:
            return self.results
        pods = self.pods_by_ns()
        exp = expected_totals(pods, a.namespaces)
        n_pods = sum(len(v) for v in pods.values())
        self.results["cluster"] = {"namespaces": a.namespaces, "pods": n_pods,
                                   "privileged_containers": exp["privileged_containers"],
                                   "expected_violating": {f"{p}/{m}": v for (p, m), v in exp["violating"].items()}}
        log(f"cluster: {a.namespaces} namespaces, {n_pods} Pods; starting the operator (load {loadavg()})")
        if a.strip_labels:
            self.strip_labels()
        kubeconfig = self.token_kubeconfig()
        try:
            self.results["start"] = self.measure_start(kubeconfig, exp)
            if a.idle > 0:
                self.results["idle"] = self.measure_idle()
            if a.drifts > 0:
                self.results["drift"] = self.measure_drift()
            if a.priv_samples > 0:
                self.results["privileged_pod"] = self.measure_privileged()
            st = proc_stats(self.op.pid)
            self.results["end"] = {"peak_rss_mb": round(st["hwm_mb"], 1), "cpu_s": round(st["cpu_s"], 2),
                                   "load": loadavg()}
        finally:
            self.stop_operator()
        return self.results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster-dir", required=True, help="private PSS_CLUSTER_DIR (kept running for --reuse)")
    p.add_argument("--operator", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                                                      "release", "pss-operator"))
    p.add_argument("--namespaces", type=int, default=2000)
    p.add_argument("--pods", type=int, default=50000)
    p.add_argument("--idle", type=int, default=300, help="idle seconds measured after the start")
    p.add_argument("--drifts", type=int, default=1000)
    p.add_argument("--drift-rate", type=float, default=100)
    p.add_argument("--priv-samples", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--start-timeout", type=int, default=600)
    p.add_argument("--strip-labels", action="store_true",
                   help="remove the PSA labels first, so the operator labels every namespace as on a fresh cluster")
    p.add_argument("--templates", type=int, default=0,
                   help="spread the Pods' container names over this many values (0: one name; a number "
                        "above --pods makes nearly every Pod distinct): memory when Pods do not share a template")
    p.add_argument("--replace-pods", action="store_true",
                   help="delete every bench Pod first and create them again (e.g. in another --templates shape)")
    p.add_argument("--workloads", type=int, default=0,
                   help="Pod-template workloads (Deployments with their ReplicaSets, CronJobs, StatefulSets, "
                        "Jobs, DaemonSets) that run no Pod, spread over the namespaces")
    p.add_argument("--operator-args", default="", help="extra `pss-operator run` flags, split on spaces "
                   "(e.g. --initial-lists paginated)")
    p.add_argument("--setup-only", action="store_true", help="create the cluster and objects, measure nothing")
    p.add_argument("--out", help="write the JSON summary here too")
    p.add_argument("--down", action="store_true", help="stop the control plane at the end")
    a = p.parse_args()
    global TEMPLATES
    TEMPLATES = a.templates
    b = Bench(a)
    try:
        r = b.run()
    finally:
        if a.down:
            subprocess.run([os.path.join(ROOT, "e2e/scripts/cluster-down.sh"), os.path.abspath(a.cluster_dir)])
    text = json.dumps(r, indent=2, default=str)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
