"""A stand-in Kubernetes API server for `kubectl`, holding rendered manifests as a running cluster.

`FakeCluster(objects)` serves, on 127.0.0.1 and a free port, what `kubectl` asks a real API server:
discovery (the legacy /api and /apis documents), objects and lists (label and field selectors
applied), watches (closed at once: enough for `rollout status` on a finished rollout), pod logs,
the scale subresource, the custom and resource metrics APIs, and the service proxy to Prometheus.
Around the given objects it adds what a cluster would have: pods, ReplicaSets (three rollout
revisions with change causes), EndpointSlices, Job selectors, events, nodes (two CPU, one tainted
GPU node), and the prerequisites k8s/README.md names (kube-dns, NodeLocal DNSCache,
kube-prometheus-stack's Prometheus and its Service).

Writes (POST, PUT, PATCH, DELETE) are answered with the object and change nothing. Exec, attach
and port-forward cannot be emulated: their upgrade is refused with `STREAMING_REFUSED` in the
message, after `kubectl` has resolved the pod, container and port (so those are checked). Every
list with a label selector and every exec'd command is recorded, for the caller to assert on.

Raises nothing itself; a request it does not know is answered 404 as a real server would.
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

STREAMING_REFUSED = "stand-in API server: exec, attach and port-forward streams are not emulated"

# (group, version) -> [(plural, kind, namespaced, short names)]
RESOURCES: dict[tuple[str, str], list[tuple[str, str, bool, list[str]]]] = {
    ("", "v1"): [("pods", "Pod", True, ["po"]), ("services", "Service", True, ["svc"]),
                 ("configmaps", "ConfigMap", True, ["cm"]), ("events", "Event", True, ["ev"]),
                 ("namespaces", "Namespace", False, ["ns"]), ("nodes", "Node", False, ["no"]),
                 ("serviceaccounts", "ServiceAccount", True, ["sa"]), ("secrets", "Secret", True, [])],
    ("apps", "v1"): [("deployments", "Deployment", True, ["deploy"]), ("replicasets", "ReplicaSet", True, ["rs"]),
                     ("daemonsets", "DaemonSet", True, ["ds"]), ("statefulsets", "StatefulSet", True, ["sts"])],
    ("batch", "v1"): [("jobs", "Job", True, [])],
    ("autoscaling", "v2"): [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True, ["hpa"])],
    ("policy", "v1"): [("poddisruptionbudgets", "PodDisruptionBudget", True, ["pdb"])],
    ("networking.k8s.io", "v1"): [("networkpolicies", "NetworkPolicy", True, ["netpol"])],
    ("discovery.k8s.io", "v1"): [("endpointslices", "EndpointSlice", True, [])],
    ("node.k8s.io", "v1"): [("runtimeclasses", "RuntimeClass", False, [])],
    ("monitoring.coreos.com", "v1"): [("podmonitors", "PodMonitor", True, ["pmon"]),
                                      ("prometheusrules", "PrometheusRule", True, ["promrule"]),
                                      ("prometheuses", "Prometheus", True, ["prom"])],
    ("metrics.k8s.io", "v1beta1"): [("pods", "PodMetrics", True, []), ("nodes", "NodeMetrics", False, [])],
}
SUBRESOURCES = {("", "v1"): [("pods/log", "Pod"), ("pods/exec", "PodExecOptions"), ("pods/attach", "PodAttachOptions"),
                             ("pods/portforward", "PodPortForwardOptions"), ("services/proxy", "ServiceProxyOptions")],
                ("apps", "v1"): [("deployments/scale", "Scale")]}
KIND_TO_RESOURCE = {kind: (group, version, plural) for (group, version), items in RESOURCES.items()
                    for plural, kind, _, _ in items if group != "metrics.k8s.io"}
CREATED = "2026-11-30T08:00:00Z"


def _hash(*parts: str, length: int = 10) -> str:
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return "".join("bcdfghjklmnpqrstvwxz2456789"[int(c, 16) % 27] for c in digest)[:length]


def _labels_match(selector: str, labels: dict) -> bool:
    """Kubernetes label selector syntax: k=v, k==v, k!=v, k in (a,b), k notin (a,b), k, !k."""
    for term in re.findall(r"[^,(]+(?:\([^)]*\))?", selector):
        term = term.strip()
        if not term:
            continue
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", term):
            values = {v.strip() for v in m.group(3).split(",")}
            if (labels.get(m.group(1)) in values) != (m.group(2) == "in"):
                return False
        elif m := re.fullmatch(r"([^!=\s]+)\s*!=\s*(\S*)", term):
            if labels.get(m.group(1)) == m.group(2):
                return False
        elif m := re.fullmatch(r"([^!=\s]+)\s*==?\s*(\S*)", term):
            if labels.get(m.group(1)) != m.group(2):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field(obj: dict, path: str):
    value = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _fields_match(selector: str, obj: dict) -> bool:
    for term in filter(None, selector.split(",")):
        negate = "!=" in term
        path, value = re.split(r"!?==?", term, maxsplit=1)
        found = _field(obj, path)
        found = "" if found is None else str(found)
        if (found == value) == negate:
            return False
    return True


def _merge_patch(target, patch):
    """A JSON merge patch (RFC 7386), which strategic merge patches of plain fields also are."""
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(target)
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge_patch(merged.get(key), value)
    return merged


@dataclass
class Recorded:
    """What the cluster saw: label-selector lists and their sizes, commands run in pods, writes."""

    selections: list[tuple[str, str, int]] = field(default_factory=list)   # (path, labelSelector, items)
    execs: list[dict] = field(default_factory=list)                           # {pod, container, command}
    writes: list[tuple[str, str]] = field(default_factory=list)               # (method, path)


class FakeCluster:
    """The API server; use as a context manager. `kubeconfig` is a file kubectl can use."""

    def __init__(self, objects: list[dict], workdir: Path, custom_metrics: set[str] = frozenset()):
        self.recorded = Recorded()
        self.custom_metrics = set(custom_metrics)
        self._store: dict[tuple[str, str, str], dict] = {}   # (plural, namespace, name) -> object
        for obj in objects:
            self._add(copy.deepcopy(obj), applied=True)
        self._add_prerequisites()
        self._add_cluster_state()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self.kubeconfig = workdir / "kubeconfig"
        port = self._server.server_address[1]
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "operator", "user": {}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "operator"}}]}))

    def __enter__(self) -> "FakeCluster":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the cluster's contents ------------------------------------------------------------------

    def _add(self, obj: dict, applied: bool = False) -> dict:
        meta = obj.setdefault("metadata", {})
        group, version, plural = KIND_TO_RESOURCE[obj["kind"]]
        namespaced = next(n for p, _, n, _ in RESOURCES[(group, version)] if p == plural)
        namespace = meta.get("namespace", "default") if namespaced else ""
        if namespaced:
            meta["namespace"] = namespace
        meta.setdefault("uid", _hash(obj["kind"], namespace, meta["name"], length=32))
        meta.setdefault("creationTimestamp", CREATED)
        meta.setdefault("resourceVersion", "1")
        meta.setdefault("generation", 1)
        if applied:
            meta.setdefault("annotations", {})["kubectl.kubernetes.io/last-applied-configuration"] = json.dumps(obj)
        self._store[(plural, namespace, meta["name"])] = obj
        return obj

    def objects(self, plural: str, namespace: str | None = None) -> list[dict]:
        return [o for (p, ns, _), o in sorted(self._store.items()) if p == plural and namespace in (None, ns)]

    def _add_prerequisites(self) -> None:
        for name in ("default", "kube-system", "monitoring", "ingress-nginx", "imgclass"):
            if ("namespaces", "", name) not in self._store:
                self._add({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
        self._add({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system",
                   "labels": {"k8s-app": "kube-dns"}}, "spec": {"clusterIP": "10.96.0.10", "selector": {"k8s-app": "kube-dns"},
                   "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53}]}})
        self._add({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", "namespace": "kube-system"},
                   "spec": {"replicas": 2, "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                            "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}},
                                         "spec": {"containers": [{"name": "coredns", "image": "coredns/coredns:1.12.0"}]}}}})
        self._add({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "node-local-dns", "namespace": "kube-system"},
                   "spec": {"selector": {"matchLabels": {"k8s-app": "node-local-dns"}},
                            "template": {"metadata": {"labels": {"k8s-app": "node-local-dns"}},
                                         "spec": {"hostNetwork": True, "containers": [{"name": "node-cache",
                                                  "image": "registry.k8s.io/dns/k8s-dns-node-cache:1.25.0"}]}}},
                   "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 3}})
        release = {"matchLabels": {"release": "kube-prometheus-stack"}}
        self._add({"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
                   "metadata": {"name": "kube-prometheus-stack-prometheus", "namespace": "monitoring"},
                   "spec": {"podMonitorSelector": release, "ruleSelector": release, "podMonitorNamespaceSelector": {}}})
        self._add({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "prometheus-operated", "namespace": "monitoring"},
                   "spec": {"clusterIP": "None", "selector": {"app.kubernetes.io/name": "prometheus"},
                            "ports": [{"name": "web", "port": 9090, "targetPort": "web"}]}})
        for name, zone, gpu in (("node-a", "zone-a", False), ("node-b", "zone-b", False), ("node-gpu-a", "zone-a", True)):
            node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}},
                "spec": {}, "status": {"allocatable": {"cpu": "8", "memory": "32Gi"},
                                       "conditions": [{"type": "Ready", "status": "True"}]}}
            if gpu:
                node["spec"]["taints"] = [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]
                node["status"]["allocatable"]["nvidia.com/gpu"] = "1"
            self._add(node)

    def _add_cluster_state(self) -> None:
        """Pods, ReplicaSets, EndpointSlices and events for the workloads, as controllers would make them."""
        hpa_floor = {h["spec"]["scaleTargetRef"]["name"]: h["spec"]["minReplicas"]
                     for h in self.objects("horizontalpodautoscalers")}
        for deployment in self.objects("deployments"):
            meta, spec = deployment["metadata"], deployment["spec"]
            replicas = spec.get("replicas", hpa_floor.get(meta["name"], 1))
            for revision in (1, 2, 3):
                template = copy.deepcopy(spec["template"])
                template_hash = _hash(meta["name"], str(revision))
                template["metadata"].setdefault("labels", {})["pod-template-hash"] = template_hash
                rs = self._add({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {
                    "name": f"{meta['name']}-{template_hash}", "namespace": meta["namespace"],
                    "labels": template["metadata"]["labels"],
                    "annotations": {"deployment.kubernetes.io/revision": str(revision),
                                    "kubernetes.io/change-cause": f"revision {revision}"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"],
                                         "uid": meta["uid"], "controller": True}]},
                    "spec": {"replicas": replicas if revision == 3 else 0,
                             "selector": {"matchLabels": {**spec["selector"]["matchLabels"], "pod-template-hash": template_hash}},
                             "template": template},
                    "status": {"replicas": replicas if revision == 3 else 0}})
            meta.setdefault("annotations", {})["deployment.kubernetes.io/revision"] = "3"
            deployment["status"] = {"observedGeneration": meta["generation"], "replicas": replicas,
                                    "updatedReplicas": replicas, "readyReplicas": replicas,
                                    "availableReplicas": replicas,
                                    "conditions": [{"type": "Available", "status": "True"},
                                                   {"type": "Progressing", "status": "True",
                                                    "reason": "NewReplicaSetAvailable"}]}
            for index in range(replicas):
                self._add_pod(rs, f"{rs['metadata']['name']}-{_hash(rs['metadata']['name'], str(index), length=5)}",
                              rs["spec"]["template"], index)
            self._event(deployment, "Normal", "ScalingReplicaSet", f"Scaled up replica set {rs['metadata']['name']}")
        for daemonset in self.objects("daemonsets"):
            self._add_pod(daemonset, f"{daemonset['metadata']['name']}-{_hash(daemonset['metadata']['name'], length=5)}",
                          daemonset["spec"]["template"], 0)
        for job in self.objects("jobs"):
            uid = job["metadata"]["uid"]
            job["spec"]["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            labels = job["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {})
            labels.update({"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": job["metadata"]["name"]})
            job["status"] = {"succeeded": 1, "startTime": CREATED}
            self._add_pod(job, f"{job['metadata']['name']}-{_hash(uid, length=5)}", job["spec"]["template"], 0)
        for service in self.objects("services"):
            selector = service["spec"].get("selector")
            service["spec"].setdefault("clusterIP", f"10.96.{len(service['metadata']['name'])}.{len(selector or {})}")
            pods = [p for p in self.objects("pods", service["metadata"]["namespace"])
                    if selector and _labels_match(",".join(f"{k}={v}" for k, v in selector.items()), p["metadata"]["labels"])]
            self._add({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {
                "name": f"{service['metadata']['name']}-{_hash(service['metadata']['name'], length=5)}",
                "namespace": service["metadata"]["namespace"],
                "labels": {"kubernetes.io/service-name": service["metadata"]["name"]}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [p["status"]["podIP"]], "conditions": {"ready": True},
                               "targetRef": {"kind": "Pod", "name": p["metadata"]["name"]}} for p in pods],
                "ports": [{"name": p.get("name", ""), "port": p["port"]} for p in service["spec"]["ports"]]})
        model_server = next((p for p in self.objects("pods", "imgclass")
                             if p["metadata"]["labels"].get("app.kubernetes.io/name") == "model-server"), None)
        if model_server:
            self._event(model_server, "Warning", "Unhealthy", "Readiness probe failed: ")

    def _add_pod(self, owner: dict, name: str, template: dict, index: int) -> None:
        spec = copy.deepcopy(template["spec"])
        spec["nodeName"] = ("node-a", "node-b")[index % 2]
        self._add({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": owner["metadata"]["namespace"], "labels": dict(template["metadata"]["labels"]),
            "ownerReferences": [{"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
                                 "uid": owner["metadata"]["uid"], "controller": True}]},
            "spec": spec,
            "status": {"phase": "Running", "podIP": f"10.244.{index}.{len(self._store) % 250 + 2}", "startTime": CREATED,
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": c["name"], "ready": True, "restartCount": 0, "image": c["image"],
                                              "imageID": "", "started": True, "state": {"running": {"startedAt": CREATED}}}
                                             for c in spec["containers"]]}})

    def _event(self, about: dict, kind: str, reason: str, message: str) -> None:
        meta = about["metadata"]
        self._add({"apiVersion": "v1", "kind": "Event", "metadata": {
            "name": f"{meta['name']}.{_hash(reason, meta['name'], length=16)}", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": about["apiVersion"], "kind": about["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": kind, "reason": reason, "message": message, "count": 1,
            "firstTimestamp": CREATED, "lastTimestamp": CREATED, "source": {"component": "stand-in"}})

    # -- HTTP --------------------------------------------------------------------------------------

    def _handler(self):
        cluster = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code: int, body, content_type: str = "application/json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "reason": reason, "message": message, "code": code})

            def do_GET(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    cluster._serve(self, urllib.parse.urlsplit(self.path), body)
                except Exception as exc:  # a bug here must show as a failed kubectl call, not a hang
                    self._status(500, "InternalError", f"stand-in API server: {exc!r}")

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        return Handler

    def _serve(self, h, url: urllib.parse.SplitResult, body: bytes) -> None:
        path = url.path.rstrip("/")
        query = urllib.parse.parse_qs(url.query)
        parts = path.strip("/").split("/")
        if path == "/api":
            return h._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path == "/apis":
            groups = sorted({g for g, _ in RESOURCES if g} | {"custom.metrics.k8s.io"})
            return h._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for gg, v in self._versions(g)],
                 "preferredVersion": {"groupVersion": f"{g}/{self._versions(g)[0][1]}", "version": self._versions(g)[0][1]}}
                for g in groups]})
        if parts[0] == "api" and len(parts) == 2:
            return h._send(200, self._resource_list("", parts[1]))
        if parts[0] == "apis" and len(parts) == 3:
            return h._send(200, self._resource_list(parts[1], parts[2]))
        if path.startswith("/apis/custom.metrics.k8s.io/v1beta1/namespaces/"):
            return self._custom_metric(h, parts)
        group, version, rest = ("", parts[1], parts[2:]) if parts[0] == "api" else (parts[1], parts[2], parts[3:])
        namespace = ""
        if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
            namespace, rest = rest[1], rest[2:]
        if not rest or (group, version) not in RESOURCES:
            return h._status(404, "NotFound", f"the server could not find the requested resource ({path})")
        plural = rest[0]
        if group == "metrics.k8s.io":
            return self._resource_metrics(h, plural, namespace)
        if len(rest) == 1:
            if h.command == "POST":
                self.recorded.writes.append((h.command, path))
                return h._send(201, json.loads(body or b"{}"))
            return self._list(h, plural, namespace, query, path)
        name = rest[1]
        if plural == "services" and len(rest) >= 3 and rest[2] == "proxy":
            return self._service_proxy(h, namespace, name, "/" + "/".join(rest[3:]), query)
        key = (plural, namespace, name)
        obj = self._store.get(key)
        if obj is None:
            if h.command == "DELETE":
                return h._status(404, "NotFound", f'{plural} "{name}" not found')
            return h._status(404, "NotFound", f'{plural} "{name}" not found')
        if len(rest) >= 3:
            return self._subresource(h, obj, rest[2], query)
        if h.command != "GET":
            self.recorded.writes.append((h.command, path))
        if h.command == "PATCH" and "merge-patch" in (h.headers.get("Content-Type") or ""):
            obj = self._store[key] = _merge_patch(obj, json.loads(body or b"{}"))
        return h._send(200, obj)

    @staticmethod
    def _versions(group: str) -> list[tuple[str, str]]:
        if group == "custom.metrics.k8s.io":
            return [(group, "v1beta1")]
        return [(g, v) for g, v in RESOURCES if g == group]

    def _resource_list(self, group: str, version: str) -> dict:
        resources = [{"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
                      "shortNames": short, "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}
                     for plural, kind, namespaced, short in RESOURCES.get((group, version), [])]
        resources += [{"name": name, "singularName": "", "namespaced": True, "kind": kind, "verbs": ["get", "create"]}
                      for name, kind in SUBRESOURCES.get((group, version), [])]
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}

    def _list(self, h, plural: str, namespace: str, query: dict, path: str) -> None:
        if "watch" in query:
            return h._send(200, b"")
        items = self.objects(plural, namespace or None)
        labels, fields = query.get("labelSelector", [""])[0], query.get("fieldSelector", [""])[0]
        if labels:
            items = [o for o in items if _labels_match(labels, o["metadata"].get("labels", {}))]
            self.recorded.selections.append((path, labels, len(items)))
        if fields:
            items = [o for o in items if _fields_match(fields, o)]
        kind = next(k for (g, v), entries in RESOURCES.items() for p, k, _, _ in entries if p == plural
                    and g != "metrics.k8s.io")
        group, version, _ = KIND_TO_RESOURCE[kind]
        h._send(200, {"kind": f"{kind}List", "apiVersion": f"{group}/{version}" if group else version,
                      "metadata": {"resourceVersion": "1"}, "items": items})

    def _subresource(self, h, obj: dict, sub: str, query: dict) -> None:
        name = obj["metadata"]["name"]
        if sub == "log":
            containers = [c["name"] for c in obj["spec"].get("containers", [])]
            wanted = query.get("container", [containers[0] if len(containers) == 1 else ""])[0]
            if wanted not in containers:
                return h._status(400, "BadRequest", f"container {wanted} is not valid for pod {name}")
            lines = [f'{{"event": "endpoint", "endpoint": "10.244.0.9:8500", "change": "added", "pod": "{name}"}}',
                     f'{{"event": "request", "request_id": "r1", "model": "fashion", "version": 1, "status": "OK"}}',
                     "I tensorflow_serving/core/loader_harness.cc:74] Successfully loaded servable version {name: fashion version: 1}"]
            return h._send(200, ("\n".join(lines) + "\n").encode(), "text/plain")
        if sub in ("exec", "attach", "portforward"):
            if sub == "exec" and h.command in ("GET", "POST"):
                self.recorded.execs.append({"pod": name, "container": query.get("container", [""])[0],
                                            "command": query.get("command", [])})
            return h._status(400, "BadRequest", STREAMING_REFUSED)
        if sub == "scale":
            return h._send(200, {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": obj["metadata"],
                                 "spec": {"replicas": obj.get("status", {}).get("replicas", 1)},
                                 "status": {"replicas": obj.get("status", {}).get("replicas", 1)}})
        h._status(404, "NotFound", f"no subresource {sub}")

    def _service_proxy(self, h, namespace: str, name_and_port: str, path: str, query: dict) -> None:
        name, _, port = name_and_port.partition(":")
        service = self._store.get(("services", namespace, name))
        ports = {str(p["port"]) for p in (service or {}).get("spec", {}).get("ports", [])} | \
                {p.get("name") for p in (service or {}).get("spec", {}).get("ports", [])}
        if service is None or (port and port not in ports):
            return h._status(404, "NotFound", f'services "{name_and_port}" not found')
        if (namespace, name, path) == ("monitoring", "prometheus-operated", "/api/v1/targets"):
            targets = [{"scrapePool": f"podMonitor/{m['metadata']['namespace']}/{m['metadata']['name']}/0",
                        "health": "up", "labels": {"pod": p["metadata"]["name"]}}
                       for m in self.objects("podmonitors")
                       if m["metadata"].get("labels", {}).get("release") == "kube-prometheus-stack"
                       for p in self.objects("pods", m["metadata"]["namespace"])
                       if _labels_match(",".join(f"{k}={v}" for k, v in m["spec"]["selector"]["matchLabels"].items()),
                                        p["metadata"]["labels"])]
            return h._send(200, {"status": "success", "data": {"activeTargets": targets, "droppedTargets": []}})
        h._status(404, "NotFound", f"stand-in API server: nothing behind {name}{path}")

    def _custom_metric(self, h, parts: list[str]) -> None:
        # /apis/custom.metrics.k8s.io/v1beta1/namespaces/NS/pods/*/METRIC
        if len(parts) != 8 or parts[5] != "pods" or parts[7] not in self.custom_metrics:
            return h._status(404, "NotFound", f"the server could not find the metric {parts[-1]} for pods")
        namespace, metric = parts[4], parts[7]
        h._send(200, {"kind": "MetricValueList", "apiVersion": "custom.metrics.k8s.io/v1beta1", "metadata": {},
                      "items": [{"describedObject": {"kind": "Pod", "namespace": namespace, "name": p["metadata"]["name"],
                                                     "apiVersion": "/v1"},
                                 "metricName": metric, "timestamp": CREATED, "value": "1500m"}
                                for p in self.objects("pods", namespace)
                                if p["metadata"]["labels"].get("app.kubernetes.io/name") == "model-server"]})

    def _resource_metrics(self, h, plural: str, namespace: str) -> None:
        if plural == "pods":
            items = [{"metadata": {"name": p["metadata"]["name"], "namespace": p["metadata"]["namespace"]},
                      "timestamp": CREATED, "window": "30s",
                      "containers": [{"name": c["name"], "usage": {"cpu": "250m", "memory": "300Mi"}}
                                     for c in p["spec"]["containers"]]}
                     for p in self.objects("pods", namespace or None)]
            return h._send(200, {"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1",
                                 "metadata": {}, "items": items})
        items = [{"metadata": {"name": n["metadata"]["name"]}, "timestamp": CREATED, "window": "30s",
                  "usage": {"cpu": "1", "memory": "4Gi"}} for n in self.objects("nodes")]
        h._send(200, {"kind": "NodeMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": items})
