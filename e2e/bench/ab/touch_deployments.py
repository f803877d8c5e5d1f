"""Annotates every Deployment of a scale.py cluster (16 threads): one watch event each.
Usage: touch_deployments.py CLUSTER_DIR VALUE"""
import concurrent.futures
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import scale  # noqa: E402

d, value = sys.argv[1], sys.argv[2]
server = next(line.split()[-1] for line in open(os.path.join(d, "kubeconfig")) if "server:" in line)
pki = os.path.join(d, "pki")
api = scale.Api(server, f"{pki}/ca.crt", f"{pki}/admin.crt", f"{pki}/admin.key")
items, _ = scale.list_all(api, "/apis/apps/v1/deployments", meta_only=True)


def touch(item):
    m = item["metadata"]
    api.request("PATCH", f"/apis/apps/v1/namespaces/{m['namespace']}/deployments/{m['name']}",
                json.dumps({"metadata": {"annotations": {"bench/touch": value}}}),
                ctype="application/merge-patch+json")


t = time.time()
with concurrent.futures.ThreadPoolExecutor(16) as ex:
    list(ex.map(touch, items))
print(f"{len(items)} Deployments annotated in {time.time() - t:.1f}s")
