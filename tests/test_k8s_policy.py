"""Policy tests over the rendered Kubernetes manifests (run by `make k8s-check`, and by `make test`).

The schemas (tools/k8s_check.py's validate step) say the YAML is well formed; these tests say it is
what a careful platform team would merge, and that it agrees with the code it deploys: probes point
at ports and paths the servers really use, the gateway's backend address is the model-server
Service, the ConfigMaps hold serving/*.config, alerts and dashboards only query metrics that exist.
Everything is read from `kubectl kustomize` output, never from the source YAML, so overlays and
patches are covered too.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import os
import re
import subprocess
import threading
import tomllib
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tools import k8s_check

ROOT = k8s_check.ROOT
K8S = k8s_check.K8S
NAMESPACE = "imgclass"
OUR_IMAGES = ("imgclass/model-server", "imgclass/gateway", "imgclass/loadtest")
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
DEPLOYABLE = ("overlays/cpu", "overlays/gpu")


# --------------------------------------------------------------------------- rendering helpers

@functools.cache
def rendered() -> dict[str, list[dict]]:
    return k8s_check.render_all()


def objects(source: str, kind: str | None = None) -> list[dict]:
    return [o for o in rendered()[source] if kind is None or o["kind"] == kind]


def one(source: str, kind: str, name: str) -> dict:
    found = [o for o in objects(source, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{source}: expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def all_workloads() -> Iterator[tuple[str, dict]]:
    for source, objs in rendered().items():
        for obj in objs:
            if obj["kind"] in POD_KINDS:
                yield source, obj


def container(source: str, deployment: str) -> dict:
    return pod_spec(one(source, "Deployment", deployment))["containers"][0]


def flags(c: dict) -> dict[str, str]:
    """--name=value arguments of a container, as a dict."""
    out = {}
    for arg in c.get("args", []):
        name, _, value = arg.partition("=")
        out[name.lstrip("-")] = value
    return out


def env(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def port_number(c: dict, port: int | str) -> int:
    """A probe/Service port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    assert port in named, f"container {c['name']} has no port named {port!r} (has {sorted(named)})"
    return named[port]


def config_map(source: str, prefix: str) -> dict:
    found = [o for o in objects(source, "ConfigMap") if o["metadata"]["name"].startswith(prefix + "-")]
    assert len(found) == 1, f"{source}: expected one ConfigMap {prefix}-<hash>, found {len(found)}"
    return found[0]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned(requirement_name: str, extra: str | None = None) -> str:
    reqs = pyproject()["project"]["dependencies"] if extra is None else \
        pyproject()["project"]["optional-dependencies"][extra]
    for req in reqs:
        name, _, version = req.partition("==")
        if name.strip().lower() == requirement_name:
            return version.strip()
    raise AssertionError(f"{requirement_name} is not pinned in pyproject.toml")


def default_model() -> str:
    """The first model in the deployed models.config: the one the probes and the gateway default to."""
    text = config_map("overlays/cpu", "model-server-config")["data"]["models.config"]
    match = re.search(r'name:\s*"([^"]+)"', text)
    assert match, "models.config names no model"
    return match.group(1)


# --------------------------------------------------------------------------- every workload

def test_every_overlay_renders_into_one_namespace():
    for source, objs in rendered().items():
        assert objs, f"{source} renders nothing"
        for obj in objs:
            if obj["kind"] != "Namespace":
                assert obj["metadata"].get("namespace") == NAMESPACE, \
                    f"{source}: {obj['kind']}/{obj['metadata']['name']} is not in namespace {NAMESPACE}"


def test_every_container_has_cpu_and_memory_requests_and_limits():
    seen = 0
    for source, workload in all_workloads():
        for c in containers(workload):
            seen += 1
            resources = c.get("resources", {})
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in resources.get(part, {}), \
                        f"{source}: {workload['metadata']['name']}/{c['name']} has no {part}.{resource}"
    assert seen >= 4


def test_every_pod_runs_non_root_read_only_without_capabilities():
    for source, workload in all_workloads():
        name = f"{source}: {workload['metadata']['name']}"
        spec = pod_spec(workload)
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot must be true"
        assert pod_sc.get("runAsUser", 0) > 0, f"{name}: runAsUser must be a non-zero uid"
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccomp RuntimeDefault"
        assert spec.get("automountServiceAccountToken") is False, f"{name}: must not mount a token"
        assert spec.get("serviceAccountName", "default") != "default", f"{name}: needs its own ServiceAccount"
        tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in containers(workload):
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}: allowPrivilegeEscalation"
            assert sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}: readOnlyRootFilesystem"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}/{c['name']}: drop ALL"
            assert not sc.get("privileged"), f"{name}/{c['name']}: privileged"
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in tmp_volumes, f"{name}/{c['name']}: /tmp must be an emptyDir"


def test_service_accounts_do_not_mount_tokens():
    accounts = [o for s in DEPLOYABLE for o in objects(s, "ServiceAccount")]
    assert accounts
    for sa in accounts:
        assert sa.get("automountServiceAccountToken") is False, sa["metadata"]["name"]


def test_every_image_is_pinned():
    version = pyproject()["project"]["version"]
    for source, workload in all_workloads():
        for c in containers(workload):
            image = c["image"]
            repo, sep, tag = image.rpartition(":")
            assert sep and "/" not in tag and tag, f"{source}: {c['name']} image {image!r} has no tag"
            assert tag != "latest", f"{source}: {c['name']} uses {image!r}"
            if repo in OUR_IMAGES:
                assert tag in (version, f"{version}-gpu"), \
                    f"{source}: {image} is not the project version {version} (pyproject.toml)"


def test_dockerfiles_pin_their_bases_and_match_pyproject():
    for dockerfile in k8s_check.DOCKERFILES:
        text = dockerfile.read_text()
        args = dict(re.findall(r"^ARG (\w+)=(\S*)", text, flags=re.M))
        for line in re.findall(r"^FROM (\S+)", text, flags=re.M):
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), "").strip('"'), line)
            if ":" not in image:      # a previous stage
                continue
            assert not image.endswith(":latest") and re.search(r":\d", image), f"{dockerfile}: FROM {image}"
    serving = (ROOT / "serving" / "Dockerfile").read_text()
    assert f"ARG TF_SERVING_VERSION={pinned('tensorflow', 'ml')}\n" in serving, \
        "serving/Dockerfile's TensorFlow Serving must match the TensorFlow that exports the models"
    gateway = (ROOT / "gateway" / "Dockerfile").read_text()
    assert f'"locust=={pinned("locust", "dev")}"' in gateway


def test_prestop_pause_is_shorter_than_the_grace_period():
    for source, workload in all_workloads():
        if workload["kind"] != "Deployment":
            continue
        spec = pod_spec(workload)
        grace = spec["terminationGracePeriodSeconds"]
        for c in spec["containers"]:
            pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
            assert pause, f"{source}: {workload['metadata']['name']} has no preStop sleep"
            shutdown = pause
            if c["name"] == "gateway":
                e = env(c)
                shutdown += float(e["GATEWAY_SHUTDOWN_DELAY_SECONDS"]) + float(e["GATEWAY_SHUTDOWN_GRACE_SECONDS"])
            assert shutdown < grace, f"{source}: {c['name']} needs {shutdown} s to stop, grace is {grace} s"


def test_each_deployment_has_a_pdb_spread_and_an_hpa():
    for source in DEPLOYABLE:
        pdbs = objects(source, "PodDisruptionBudget")
        hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in objects(source, "HorizontalPodAutoscaler")}
        for deployment in objects(source, "Deployment"):
            name = deployment["metadata"]["name"]
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert any(_selects(p["spec"]["selector"]["matchLabels"], labels) for p in pdbs), f"{source}: {name} PDB"
            keys = {t["topologyKey"] for t in pod_spec(deployment).get("topologySpreadConstraints", [])}
            assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys, f"{source}: {name} spread"
            hpa = hpas.get(name)
            assert hpa, f"{source}: {name} has no HPA"
            assert hpa["spec"]["minReplicas"] >= 2, f"{source}: {name} HPA minReplicas < 2 defeats the PDB"
            assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300, \
                f"{source}: {name} scales down without stabilisation"
            assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------------------- model server

def test_model_server_configmap_holds_serving_configs():
    for source in DEPLOYABLE:
        data = config_map(source, "model-server-config")["data"]
        assert set(data) == set(k8s_check.SERVING_CONFIGS), source
        for name, text in data.items():
            expected = ROOT / "serving" / name
            if source == "overlays/gpu" and name == "batching.config":
                expected = K8S / "overlays" / "gpu" / "batching.config"
            assert text == expected.read_text(), f"{source}: ConfigMap {name} differs from {expected.relative_to(ROOT)}"
        c = container(source, "model-server")
        mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "config")
        f = flags(c)
        assert f["model_config_file"] == f"{mount}/models.config"
        assert f["batching_parameters_file"] == f"{mount}/batching.config" and f["enable_batching"] == "true"
        assert f["monitoring_config_file"] == f"{mount}/monitoring.config"


PYTHON_SERVING_ONLY_FLAGS = {"bind_address", "shutdown_grace_period_seconds"}


def test_model_server_flags_and_configs_are_what_tf_serving_accepts(tmp_path):
    """The rendered args and ConfigMap files go through serving/'s parsers, which read flags and
    config files as tensorflow_model_server does (a bad file stops the real server at start-up)."""
    from serving import configs, flags as serving_flags

    for source in DEPLOYABLE:
        c = container(source, "model-server")
        assert c["command"] == ["tensorflow_model_server"]
        known = {f.name for f in dataclasses.fields(serving_flags.ServerOptions)}
        known = (known | serving_flags.ACCEPTED_WITHOUT_EFFECT) - PYTHON_SERVING_ONLY_FLAGS
        for name in flags(c):
            assert name in known, f"{source}: --{name} is not a tensorflow_model_server flag"
        data = config_map(source, "model-server-config")["data"]
        mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "config")
        local = tmp_path / source.replace("/", "-")
        local.mkdir()
        for name, text in data.items():
            (local / name).write_text(text)
        argv = [a.replace(f"={mount}/", f"={local}/") for a in c["args"]]
        options = serving_flags.parse(argv)
        models = configs.model_server_config(options)
        assert [m.name for m in models.model_config_list.config][0] == default_model()
        for model in models.model_config_list.config:
            assert model.base_path == f"/models/{model.name}", "serving/Dockerfile copies models/ to /models"
        batching = configs.batching_settings(options)
        assert batching is not None and batching.max_batch_size >= 1
        assert configs.monitoring_settings(options).prometheus_enabled, f"{source}: no Prometheus metrics"
        assert dict(configs.grpc_channel_arguments(options))["grpc.max_connection_age_ms"] > 0


def test_model_server_args_repeat_serving_run_sh(tmp_path):
    """serving/run.sh is the image's entrypoint and the one list of the server's flags; the
    Deployment spells them out (visible in `kubectl describe`). Run run.sh as the image does,
    with a stand-in tensorflow_model_server that prints its arguments, and compare."""
    fake = tmp_path / "tensorflow_model_server"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    for source in DEPLOYABLE:
        c = container(source, "model-server")
        mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "config")
        proc = subprocess.run(["bash", str(ROOT / "serving" / "run.sh")], capture_output=True, text=True, timeout=30,
                              env={"PATH": f"{tmp_path}:/usr/bin:/bin", "CONFIG_DIR": mount, "MODELS_DIR": "/models"})
        assert proc.returncode == 0, proc.stderr
        run_sh = flags({"args": proc.stdout.split()})
        assert run_sh, "run.sh passed no flags"
        deployed = flags(c)
        for name, value in run_sh.items():
            assert deployed.get(name) == value, f"{source}: --{name}={deployed.get(name)}, run.sh sets {value}"


def test_model_server_ports_and_probes_match_its_flags():
    model = default_model()
    monitoring = config_map("overlays/cpu", "model-server-config")["data"]["monitoring.config"]
    metrics_path = re.search(r'path:\s*"([^"]+)"', monitoring).group(1)
    for source in DEPLOYABLE:
        deployment = one(source, "Deployment", "model-server")
        c = pod_spec(deployment)["containers"][0]
        f = flags(c)
        grpc_port, rest_port = int(f["port"]), int(f["rest_api_port"])
        assert port_number(c, "grpc") == grpc_port and port_number(c, "http") == rest_port
        startup = c["startupProbe"]["httpGet"]
        assert startup["path"] == f"/v1/models/{model}" and port_number(c, startup["port"]) == rest_port
        assert c["livenessProbe"]["tcpSocket"]["port"] in ("http", rest_port)
        script = c["readinessProbe"]["exec"]["command"][-1]
        assert f"/dev/tcp/127.0.0.1/{rest_port} " in script and f"GET /v1/models/{model} " in script
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(rest_port) and annotations["prometheus.io/path"] == metrics_path


def test_gpu_only_in_the_gpu_overlay():
    for source, workload in all_workloads():
        for c in containers(workload):
            has_gpu = "nvidia.com/gpu" in c["resources"].get("limits", {})
            wants_gpu = source == "overlays/gpu" and c["name"] == "model-server"
            assert has_gpu == wants_gpu, f"{source}: {c['name']} GPU limit {'present' if has_gpu else 'missing'}"
    spec = pod_spec(one("overlays/gpu", "Deployment", "model-server"))
    c = spec["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and c["image"].endswith("-gpu")
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    cpu_flags, gpu_flags = flags(container("overlays/cpu", "model-server")), flags(c)
    tuned = {"tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism"}
    assert {k: v for k, v in cpu_flags.items() if k not in tuned} == \
        {k: v for k, v in gpu_flags.items() if k not in tuned}, "gpu args drifted from the base's"
    for source in DEPLOYABLE:   # TensorFlow's thread pools sized to the CPU limit, not the node
        c = container(source, "model-server")
        assert int(flags(c)["tensorflow_intra_op_parallelism"]) == _cpus(c["resources"]["limits"]["cpu"])


def _cpus(quantity: str) -> int:
    return int(quantity[:-1]) // 1000 if quantity.endswith("m") else int(quantity)


class _FakeTfServingStatus(http.server.BaseHTTPRequestHandler):
    """Answers GET /v1/models/<name> the way tensorflow_model_server's REST API does."""

    state = "AVAILABLE"
    model = "fashion"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path != f"/v1/models/{self.model}":
            body, code = b'{ "error": "Could not find any versions of model x" }', 404
        else:
            body, code = ('{\n "model_version_status": [\n  {\n   "version": "1",\n   "state": "%s",\n'
                          '   "status": {\n    "error_code": "OK",\n    "error_message": ""\n   }\n  }\n ]\n}\n'
                          % self.state).encode(), 200
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("state, ready", [("AVAILABLE", True), ("LOADING", False), ("END", False),
                                          ("unknown-model", False), ("no-server", False)])
def test_model_server_readiness_command_requires_an_available_version(state, ready):
    """Runs the rendered exec probe itself (bash /dev/tcp + grep) against an HTTP server answering
    like TF Serving: a 200 alone must not pass, only a version in state AVAILABLE."""
    c = container("overlays/cpu", "model-server")
    command = list(c["readinessProbe"]["exec"]["command"])
    handler = type("Handler", (_FakeTfServingStatus,), {
        "state": state, "model": default_model() if state != "unknown-model" else "other"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]
    if state == "no-server":
        server.server_close()
    else:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        rest_port = flags(c)["rest_api_port"]
        command[-1] = command[-1].replace(f"/dev/tcp/127.0.0.1/{rest_port} ", f"/dev/tcp/127.0.0.1/{port} ")
        proc = subprocess.run(command, capture_output=True, text=True, timeout=c["readinessProbe"]["timeoutSeconds"])
    finally:
        if state != "no-server":
            server.shutdown()
            server.server_close()
    assert (proc.returncode == 0) == ready, f"state {state}: exit {proc.returncode} {proc.stderr}"


def test_model_server_hpa_metric_is_served_by_the_adapter_rule():
    rules = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    served = {r["name"]["as"]: r for r in rules["rules"]["custom"]}
    for source in DEPLOYABLE:
        hpa = one(source, "HorizontalPodAutoscaler", "model-server")
        pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        assert pods and all(name in served for name in pods), f"{source}: {pods} not in the adapter rules"
        rule = served[pods[0]]
        assert rule["resources"]["overrides"]["pod"]["resource"] == "pod"
        query = (rule["metricsQuery"].replace("<<.Series>>", rule["seriesQuery"].split("{")[0])
                 .replace("<<.LabelMatchers>>", 'namespace="imgclass"').replace("<<.GroupBy>>", "pod"))
        assert_promql_uses_known_metrics(query, "adapter rule")


# --------------------------------------------------------------------------- gateway

def test_gateway_backend_is_the_headless_model_server_service():
    for source in DEPLOYABLE:
        backend = env(container(source, "gateway"))["GATEWAY_BACKEND"]
        match = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", backend)
        assert match, f"{source}: GATEWAY_BACKEND {backend!r} is not dns:///<svc>.<ns>.svc.cluster.local:<port>"
        name, namespace, port = match.group(1), match.group(2), int(match.group(3))
        service = one(source, "Service", name)
        assert service["metadata"]["namespace"] == namespace
        assert service["spec"].get("clusterIP") == "None", "round_robin needs a headless Service"
        service_port = next((p for p in service["spec"]["ports"] if p["port"] == port), None)
        assert service_port, f"{source}: Service {name} has no port {port}"
        model_server = container(source, "model-server")
        assert port_number(model_server, service_port["targetPort"]) == int(flags(model_server)["port"])
        pod_labels = one(source, "Deployment", "model-server")["spec"]["template"]["metadata"]["labels"]
        assert _selects(service["spec"]["selector"], pod_labels)


def test_services_target_ports_their_pods_declare():
    for source in DEPLOYABLE:
        for service in objects(source, "Service"):
            matching = [d for d in objects(source, "Deployment")
                        if _selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
            assert matching, f"{source}: Service {service['metadata']['name']} selects no pods"
            for p in service["spec"]["ports"]:
                port_number(pod_spec(matching[0])["containers"][0], p["targetPort"])


def test_gateway_env_and_config_are_valid_settings(monkeypatch, tmp_path):
    """The gateway's own settings model loads the rendered config file with the rendered env."""
    from gateway import settings as gateway_settings

    for source in DEPLOYABLE:
        c = container(source, "gateway")
        e = env(c)
        for name in e:
            assert name.startswith("GATEWAY_") and name[8:].lower() in gateway_settings.Settings.model_fields, \
                f"{source}: {name} is not a gateway setting"
        config_file = Path(e["GATEWAY_CONFIG"])
        mount = next(m for m in c["volumeMounts"] if config_file.parent == Path(m["mountPath"]))
        volume = next(v for v in pod_spec(one(source, "Deployment", "gateway"))["volumes"] if v["name"] == mount["name"])
        data = next(o for o in objects(source, "ConfigMap")
                    if o["metadata"]["name"] == volume["configMap"]["name"])["data"]
        config_copy = tmp_path / f"{source.replace('/', '-')}-{config_file.name}"
        config_copy.write_text(data[config_file.name])
        for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
            monkeypatch.delenv(name)
        for name, value in e.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("GATEWAY_CONFIG", str(config_copy))
        s = gateway_settings.load_settings()
        assert s.grpc_port == port_number(c, "grpc") and s.http_port == port_number(c, "http")
        assert s.host == "0.0.0.0"
        assert s.default_model == default_model()
        assert s.decode_workers <= 2 * _cpus(c["resources"]["limits"]["cpu"])


def test_gateway_probes_use_its_ports_paths_and_health_service():
    import gateway.generated  # noqa: F401  (puts the classifier.v1 stubs on sys.path, as the gateway does)
    from classifier.v1 import classifier_pb2

    service_name = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name
    source_text = "\n".join(p.read_text() for p in (ROOT / "gateway").glob("*.py"))
    for source in DEPLOYABLE:
        c = container(source, "gateway")
        e = env(c)
        readiness = c["readinessProbe"]["grpc"]
        assert readiness["port"] == int(e["GATEWAY_GRPC_PORT"]) == port_number(c, "grpc")
        assert readiness["service"] == service_name
        for probe in ("startupProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            assert port_number(c, get["port"]) == int(e["GATEWAY_HTTP_PORT"])
            assert f'"{get["path"]}"' in source_text, f"the gateway serves no route {get['path']}"


def test_network_policies_only_open_what_is_needed():
    for source in DEPLOYABLE:
        policies = {p["metadata"]["name"]: p["spec"] for p in objects(source, "NetworkPolicy")}
        deny = policies["default-deny-all"]
        assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
        assert "ingress" not in deny and "egress" not in deny
        dns = policies["allow-dns-egress"]["egress"][0]
        assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
        model_server = policies["model-server"]
        grpc_rule = [r for r in model_server["ingress"] if {"protocol": "TCP", "port": "grpc"} in r["ports"]]
        assert grpc_rule and grpc_rule[0]["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}]
        assert model_server["egress"] == []
        gateway = policies["gateway"]
        model_port = int(flags(container(source, "model-server"))["port"])
        assert gateway["egress"] == [{"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "model-server"}}}],
                                      "ports": [{"protocol": "TCP", "port": model_port}]}]
        for rule in gateway["ingress"] + model_server["ingress"]:
            assert rule.get("from"), f"{source}: an ingress rule open to every source"


# --------------------------------------------------------------------------- canary and load test

def test_canary_is_a_second_track_behind_the_same_service():
    canary = one("overlays/canary", "Deployment", "model-server-canary")
    labels = canary["spec"]["template"]["metadata"]["labels"]
    assert labels["track"] == "canary" and canary["spec"]["selector"]["matchLabels"]["track"] == "canary"
    assert canary["spec"]["replicas"] == 1
    stable = one("overlays/cpu", "Deployment", "model-server")
    assert not _selects(stable["spec"]["selector"]["matchLabels"], labels), "stable would adopt canary pods"
    assert _selects(one("overlays/cpu", "Service", "model-server")["spec"]["selector"], labels)


def test_loadtest_runs_the_project_locustfile_against_the_gateway_service():
    source = "overlays/loadtest"
    master = one(source, "Job", "locust-master")
    workers = one(source, "Deployment", "locust-worker")
    master_args = pod_spec(master)["containers"][0]["args"]
    worker_args = pod_spec(workers)["containers"][0]["args"]
    for args in (master_args, worker_args):
        locustfile = args[args.index("-f") + 1]
        assert locustfile.startswith("/opt/imgclass/")
        assert (ROOT / locustfile.removeprefix("/opt/imgclass/")).exists(), f"{locustfile} is not in the repository"
    host = master_args[master_args.index("--host") + 1]
    match = re.fullmatch(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", host)
    assert match, host
    gateway = one("overlays/cpu", "Service", match.group(1))
    assert gateway["metadata"]["namespace"] == match.group(2)
    ports = {p["name"]: p["port"] for p in gateway["spec"]["ports"]}
    assert int(match.group(3)) == ports["http"]
    grpc_target = master_args[master_args.index("--grpc-target") + 1]
    assert grpc_target == f"{match.group(1)}.{match.group(2)}.svc.cluster.local:{ports['grpc']}", grpc_target
    master_service = one(source, "Service", worker_args[worker_args.index("--master-host") + 1])
    assert _selects(master_service["spec"]["selector"], master["spec"]["template"]["metadata"]["labels"])
    expected = int(master_args[master_args.index("--expect-workers") + 1])
    assert workers["spec"]["replicas"] == expected, "the master would wait for workers that never come"
    # The gateway admits the load generator (its base policy only admits the ingress controller).
    admits = [p for p in objects(source, "NetworkPolicy")
              if p["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "gateway"}}]
    assert admits, "no NetworkPolicy lets the workers reach the gateway"


# --------------------------------------------------------------------------- monitoring

TF_SERVING_METRICS = {
    # tensorflow_serving/servables/tensorflow/util.cc, batching/batching_session.cc,
    # prometheus_exporter.cc ('/' -> ':', Samplers -> histograms), TF's saved_model loader.
    ":tensorflow:serving:request_count": {"model_name", "status"},
    ":tensorflow:serving:request_latency": {"model_name", "API", "entrypoint"},
    ":tensorflow:serving:runtime_latency": {"model_name", "API", "runtime"},
    ":tensorflow:serving:batching_session:queuing_latency": {"thread_pool_name"},
    ":tensorflow:serving:batching_session:processed_batch_size": None,
    ":tensorflow:serving:batching_session:input_batch_size": None,
    ":tensorflow:cc:saved_model:load_attempt_count": {"model_path", "status"},
    ":tensorflow:serving:model_warmup_latency": {"model_path", "status"},
}
TF_SERVING_HISTOGRAMS = {":tensorflow:serving:request_latency", ":tensorflow:serving:runtime_latency",
                         ":tensorflow:serving:batching_session:queuing_latency",
                         ":tensorflow:serving:batching_session:processed_batch_size",
                         ":tensorflow:serving:batching_session:input_batch_size",
                         ":tensorflow:serving:model_warmup_latency"}
KUBE_STATE_METRICS = {
    "kube_pod_status_ready": {"namespace", "pod", "uid", "condition"},
    "kube_pod_container_status_restarts_total": {"namespace", "pod", "uid", "container"},
    "kube_horizontalpodautoscaler_status_current_replicas": {"namespace", "horizontalpodautoscaler"},
    "kube_horizontalpodautoscaler_status_desired_replicas": {"namespace", "horizontalpodautoscaler"},
    "kube_horizontalpodautoscaler_spec_max_replicas": {"namespace", "horizontalpodautoscaler"},
}
# Added by Prometheus / the PodMonitors to every scraped series.
TARGET_LABELS = {"namespace", "pod", "container", "job", "instance", "endpoint", "track", "app_kubernetes_io_name"}


@functools.cache
def known_metrics() -> dict[str, set[str] | None]:
    """Every series name the alerts may query -> its label names (None: not checked)."""
    from prometheus_client.metrics import MetricWrapperBase

    from gateway.metrics import Metrics

    known: dict[str, set[str] | None] = {}
    gateway_metrics = Metrics()
    for family in gateway_metrics.registry.collect():     # process_*, python_* collectors
        for sample in family.samples:
            known.setdefault(sample.name, set(sample.labels))
    for metric in vars(gateway_metrics).values():
        if isinstance(metric, MetricWrapperBase):
            labels = set(metric._labelnames)
            if metric._type == "counter":
                known[metric._name + "_total"] = labels
            elif metric._type == "histogram":
                known.update({metric._name + "_bucket": labels | {"le"}, metric._name + "_sum": labels,
                              metric._name + "_count": labels})
            else:
                known[metric._name] = labels
    for name, labels in TF_SERVING_METRICS.items():
        if name in TF_SERVING_HISTOGRAMS:
            known[name + "_bucket"] = None if labels is None else labels | {"le"}
            known[name + "_sum"] = known[name + "_count"] = labels
        else:
            known[name] = labels
    known.update(KUBE_STATE_METRICS)
    return known


def _selectors(node) -> Iterator:
    import promql_parser

    if isinstance(node, promql_parser.VectorSelector):
        yield node
    for attr in ("lhs", "rhs", "expr", "vector_selector", "param"):
        child = getattr(node, attr, None)
        if child is not None:
            yield from _selectors(child)
    for child in getattr(node, "args", None) or []:
        yield from _selectors(child)


def _grouping_labels(node) -> Iterator[str]:
    modifier = getattr(node, "modifier", None)
    labels = getattr(modifier, "labels", None)
    if labels and type(node).__name__ == "AggregateExpr":
        yield from labels
    for attr in ("lhs", "rhs", "expr", "vector_selector", "param"):
        child = getattr(node, attr, None)
        if child is not None:
            yield from _grouping_labels(child)
    for child in getattr(node, "args", None) or []:
        yield from _grouping_labels(child)


def assert_promql_uses_known_metrics(expr: str, where: str) -> None:
    import promql_parser

    try:
        tree = promql_parser.parse(expr)
    except ValueError as exc:
        raise AssertionError(f"{where}: PromQL does not parse ({exc}): {expr}") from None
    known = known_metrics()
    selectors = list(_selectors(tree))
    assert selectors, f"{where}: queries no metric"
    allowed_labels = set(TARGET_LABELS)
    for selector in selectors:
        assert selector.name in known, f"{where}: no such metric {selector.name!r}"
        labels = known[selector.name]
        if labels is None:
            continue
        allowed_labels |= labels
        for matcher in selector.matchers.matchers:
            assert matcher.name in labels | TARGET_LABELS, f"{where}: {selector.name} has no label {matcher.name!r}"
    for label in _grouping_labels(tree):
        assert label in allowed_labels, f"{where}: grouping by {label!r}, which no queried metric has"


def alert_rules() -> list[dict]:
    rules = [r for o in objects("monitoring", "PrometheusRule") for g in o["spec"]["groups"] for r in g["rules"]]
    assert rules, "no PrometheusRule in k8s/monitoring"
    return rules


def test_alert_rules_query_real_metrics_and_link_their_runbook():
    readme = (K8S / "README.md").read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", readme, flags=re.M)}
    names = set()
    for rule in alert_rules():
        name = rule.get("alert") or rule.get("record")
        assert name not in names, f"duplicate rule {name}"
        names.add(name)
        assert_promql_uses_known_metrics(rule["expr"], f"rule {name}")
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"page", "ticket"}, name
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
            runbook = rule["annotations"]["runbook_url"]
            assert runbook.startswith("k8s/README.md#") and runbook.split("#", 1)[1] in anchors, \
                f"alert {name}: runbook {runbook} has no heading in k8s/README.md"
    for required in ("GatewayLatencySLOFastBurn", "GatewayHighErrorRate", "GatewayQueueSaturated", "ModelNotAvailable"):
        assert required in names


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_queue_alert_threshold_follows_the_configured_queue_bound():
    max_queue = yaml.safe_load(config_map("overlays/cpu", "gateway-config")["data"]["config.yaml"])["max_queue"]
    rule = next(r for r in alert_rules() if r.get("alert") == "GatewayQueueSaturated")
    threshold = float(re.search(r">\s*([\d.]+)\s*$", rule["expr"].strip()).group(1))
    assert threshold == pytest.approx(0.8 * max_queue), f"alert at {threshold}, queue bound is {max_queue}"


def test_pod_monitors_scrape_the_metrics_ports_and_paths():
    monitors = {m["metadata"]["name"]: m["spec"] for m in objects("monitoring", "PodMonitor")}
    for deployment in ("model-server", "gateway"):
        annotations = one("overlays/cpu", "Deployment", deployment)["spec"]["template"]["metadata"]["annotations"]
        spec = monitors[deployment]
        c = container("overlays/cpu", deployment)
        endpoint = spec["podMetricsEndpoints"][0]
        assert port_number(c, endpoint["port"]) == int(annotations["prometheus.io/port"])
        assert endpoint["path"] == annotations["prometheus.io/path"]
        assert _selects(spec["selector"]["matchLabels"],
                        one("overlays/cpu", "Deployment", deployment)["spec"]["template"]["metadata"]["labels"])


def test_grafana_dashboard_queries_real_metrics():
    dashboard = config_map("monitoring", "imgclass-dashboard")
    board = json.loads(dashboard["data"]["imgclass.json"])
    assert dashboard["metadata"]["labels"].get("grafana_dashboard") == "1"
    targets = [t for p in board["panels"] for t in p.get("targets", [])]
    assert len(targets) >= 10
    for target in targets:
        expr = target["expr"].replace("$__rate_interval", "5m").replace("$namespace", NAMESPACE)
        assert_promql_uses_known_metrics(expr, f"dashboard panel {target.get('legendFormat', expr)}")
