"""Policy tests over the rendered Kubernetes manifests (run by `make k8s-check`, and by `make test`).

The schemas (tools/k8s_check.py's validate step) say the YAML is well formed; these tests say it is
what a careful platform team would merge, and that it agrees with the code it deploys: probes point
at ports and paths the servers really use, the gateway's backend address is the model-server
Service, the ConfigMaps hold serving/*.config, the autoscaler's target can be reached, the shutdown
timeline leaves no request behind, alerts and dashboards only query metrics that exist.
Everything is read from `kubectl kustomize` output, never from the source YAML, so overlays,
components and patches are covered too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import tomllib
from pathlib import Path
from typing import Iterator
from unittest import mock

import pytest
import yaml

from tools import k8s_check

ROOT = k8s_check.ROOT
K8S = k8s_check.K8S
NAMESPACE = "imgclass"
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
DEPLOYABLE = ("overlays/cpu", "overlays/gpu")
# Everything that runs model servers on GPUs: the gpu overlay, its canary, its optional variants.
GPU_SOURCES = ("overlays/gpu", "overlays/canary-gpu", "overlays/gpu+nvidia-runtime-class")
# CoreDNS's `kubernetes` plugin answers with a 5 s TTL (NodeLocal DNSCache keeps it): how long a
# resolver may still return a pod that has left the Service.
CLUSTER_DNS_TTL_SECONDS = 5
# Time TF Serving needs between SIGTERM and its exit (it does not drain: it stops at once).
MODEL_SERVER_EXIT_SECONDS = 10
# The first start of TF Serving's GPU build on a GPU it has no kernels for (sm_90: H100/H200):
# CUDA compiles TensorFlow's PTX before the model loads; tens of minutes have been seen.
PTX_JIT_SECONDS = 30 * 60
# The Prometheus Helm release a default kube-prometheus-stack selects its PodMonitors/rules by.
PROMETHEUS_RELEASE = "kube-prometheus-stack"


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


def model_server_deployments(source: str) -> list[dict]:
    """The stable model-server Deployment and/or a canary one (named model-server-canary)."""
    found = [d for d in objects(source, "Deployment")
             if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == "model-server"]
    assert found, f"{source}: no model-server Deployment"
    return found


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


def config_mount(c: dict) -> str:
    return next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "config")


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
    """The first model in the deployed models.config: the one the gateway defaults to."""
    text = config_map("overlays/cpu", "model-server-config")["data"]["models.config"]
    match = re.search(r'name:\s*"([^"]+)"', text)
    assert match, "models.config names no model"
    return match.group(1)


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _cpus(quantity: str) -> int:
    return int(quantity[:-1]) // 1000 if quantity.endswith("m") else int(quantity)


def _seconds_of_ms(value: int | str) -> float:
    return int(value) / 1000


@functools.cache
def model_server_options(source: str, deployment: str = "model-server", tmp: str = "/tmp"):
    """The rendered model-server args, with the ConfigMap files written to a local directory, parsed
    by serving/'s flag parser (which reads flags as tensorflow_model_server does)."""
    from serving import flags as serving_flags

    workload = one(source, "Deployment", deployment)
    c = pod_spec(workload)["containers"][0]
    config_name = next(v["configMap"]["name"] for v in pod_spec(workload)["volumes"] if v["name"] == "config")
    data = one(source, "ConfigMap", config_name)["data"]
    local = Path(tmp) / f"k8s-policy-{os.getpid()}-{source.replace('/', '-')}-{deployment}"
    local.mkdir(parents=True, exist_ok=True)
    for name, text in data.items():
        (local / name).write_text(text)
    mount = config_mount(c)
    return serving_flags.parse([a.replace(f"={mount}/", f"={local}/") for a in c["args"]])


@functools.cache
def gateway_settings(source: str):
    """The gateway's own settings model, loaded from the rendered env and config file (as the pod does)."""
    from gateway import settings as gateway_settings_module

    c = container(source, "gateway")
    e = env(c)
    config_file = Path(e["GATEWAY_CONFIG"])
    mount = next(m for m in c["volumeMounts"] if config_file.parent == Path(m["mountPath"]))
    volume = next(v for v in pod_spec(one(source, "Deployment", "gateway"))["volumes"] if v["name"] == mount["name"])
    data = one(source, "ConfigMap", volume["configMap"]["name"])["data"]
    local = Path("/tmp") / f"k8s-policy-{os.getpid()}-{source.replace('/', '-')}-{config_file.name}"
    local.write_text(data[config_file.name])
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    with mock.patch.dict(os.environ, {**clean, **e, "GATEWAY_CONFIG": str(local)}, clear=True):
        return gateway_settings_module.load_settings()


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


def test_every_image_is_pinned_by_digest_or_is_the_local_project_build():
    version = pyproject()["project"]["version"]
    seen = 0
    for source, workload in all_workloads():
        for c in containers(workload):
            seen += 1
            problem = k8s_check.image_problem(c["image"], version)
            assert problem is None, f"{source}: {workload['metadata']['name']}/{c['name']}: {problem}"
    assert seen >= 4


@pytest.mark.parametrize("image, ok", [
    ("imgclass/model-server:{v}", True), ("imgclass/model-server:{v}-gpu", True),
    ("registry.example.com/imgclass/model-server:{v}-m2@sha256:" + "a" * 64, True),
    ("registry.example.com/imgclass/model-server@sha256:" + "b" * 64, True),
    ("imgclass/model-server:{v}-m2", False),                  # a moved tag would go unnoticed
    ("registry.example.com/imgclass/model-server:{v}", False),  # pushed, so movable
    ("imgclass/model-server:latest", False), ("imgclass/model-server", False),
])
def test_image_policy_accepts_digests_and_the_local_build_only(image, ok):
    version = pyproject()["project"]["version"]
    assert (k8s_check.image_problem(image.format(v=version), version) is None) == ok


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


def _apply_chmod(mode: int, spec: str, is_dir: bool) -> int:
    """What `COPY --chmod=spec` makes of a file or directory of `mode` (octal, or chmod's symbolic
    clauses such as u=rwX,go=rX, where X is x for directories and already-executable files)."""
    if re.fullmatch(r"[0-7]{3,4}", spec):
        return int(spec, 8)
    for clause in spec.split(","):
        match = re.fullmatch(r"([ugoa]*)([=+-])([rwxX]*)", clause)
        assert match, f"--chmod clause {clause!r} is not chmod's symbolic syntax"
        who, op, perms = match.groups()
        who = who or "a"
        shifts = [s for w, s in (("u", 6), ("g", 3), ("o", 0)) if w in who or "a" in who]
        bits = sum({"r": 4, "w": 2, "x": 1}.get(p, 0) for p in perms)
        if "X" in perms and (is_dir or mode & 0o111):
            bits |= 1
        for shift in shifts:
            if op == "=":
                mode = (mode & ~(7 << shift)) | (bits << shift)
            elif op == "+":
                mode |= bits << shift
            else:
                mode &= ~(bits << shift)
    return mode


def _dockerfile_copies(dockerfile: Path) -> Iterator[tuple[str, bool, list[str]]]:
    """(stage, stage is an image people run, options) of each COPY/ADD from the build context."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    stages: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if m := re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, flags=re.I):
            stages.append((m.group(1) or f"stage{len(stages)}", []))
        elif re.match(r"(COPY|ADD)\s", line) and stages:
            stages[-1][1].append(line)
    copied_from = set(re.findall(r"--from=(\S+)", text))
    for stage, lines in stages:
        for line in lines:
            options = re.findall(r"--(\w+)=(\S+)", line)
            if any(name == "from" for name, _ in options):
                continue
            yield stage, stage not in copied_from, [f"{n}={v}" for n, v in options]


def test_images_copy_files_root_owned_and_readable_whatever_the_working_tree_modes():
    """A freshly exported model version may be 0700 in the working tree (git hides it: clones
    normalise modes): an image that copied it as is would hold a model its non-root server cannot
    read, and every pod would crash-loop. So every file copied into a runnable image is root-owned
    (not writable by the server) with modes that let any uid read files and enter directories."""
    for dockerfile in k8s_check.DOCKERFILES:
        first = dockerfile.read_text().splitlines()[0]
        seen = 0
        for stage, runnable, options in _dockerfile_copies(dockerfile):
            if not runnable:
                continue
            seen += 1
            opts = dict(o.split("=", 1) for o in options)
            where = f"{dockerfile.relative_to(ROOT)} (stage {stage})"
            assert opts.get("chown") == "0:0", f"{where}: COPY without --chown=0:0: {options}"
            assert "chmod" in opts, f"{where}: COPY without --chmod keeps the working tree's modes"
            private_dir = _apply_chmod(0o700, opts["chmod"], is_dir=True)
            private_file = _apply_chmod(0o600, opts["chmod"], is_dir=False)
            assert private_dir & 0o005 == 0o005, f"{where}: --chmod={opts['chmod']} leaves a 0700 directory closed"
            assert private_file & 0o004, f"{where}: --chmod={opts['chmod']} leaves a 0600 file unreadable"
            assert not (private_dir | private_file) & 0o022, f"{where}: --chmod={opts['chmod']} lets others write"
            if not re.fullmatch(r"[0-7]{3,4}", opts["chmod"]):
                version = re.fullmatch(r"# syntax=docker/dockerfile:(\d+)\.(\d+)\S*", first)
                assert version and (int(version.group(1)), int(version.group(2))) >= (1, 14), \
                    f"{dockerfile.relative_to(ROOT)}: symbolic --chmod needs `# syntax=docker/dockerfile:1.14` first"
        assert seen, f"{dockerfile}: no COPY into a runnable image found"


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
            elif c["name"] == "model-server":
                shutdown += MODEL_SERVER_EXIT_SECONDS
            assert shutdown <= grace, f"{source}: {c['name']} needs {shutdown} s to stop, grace is {grace} s"


def test_model_server_shutdown_timeline_leaves_no_request_behind():
    """A terminating model-server pod leaves the headless Service at once and sleeps (preStop), then
    TF Serving exits on SIGTERM without draining. Within the sleep, (1) every gateway must have
    dropped the pod: it re-resolves the Service every backend_resolve_seconds, and the cluster DNS
    may answer from its cache for one TTL; (2) the calls it sent before must have finished (their
    deadline is at most request_timeout_seconds); (3) every client connection must have been closed
    by the server's max connection age plus its grace, so no client keeps using the pod."""
    for source in DEPLOYABLE:
        settings = gateway_settings(source)
        for deployment in model_server_deployments(source):
            c = pod_spec(deployment)["containers"][0]
            pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            arguments = dict(item.split("=") for item in flags(c)["grpc_channel_arguments"].split(","))
            age = _seconds_of_ms(arguments["grpc.max_connection_age_ms"])
            age_grace = _seconds_of_ms(arguments["grpc.max_connection_age_grace_ms"])
            where = f"{source}: {deployment['metadata']['name']}"
            assert age + age_grace < pause, \
                f"{where}: connections live up to {age + age_grace} s, the preStop sleep is {pause} s"
            assert settings.backend_balancing == "endpoints", \
                f"{source}: the gateway must resolve the Service itself (backend_balancing: endpoints)"
            resolve = settings.backend_resolve_seconds
            assert resolve <= 5, f"{source}: the gateway re-resolves the model servers only every {resolve} s"
            last_call_done = resolve + CLUSTER_DNS_TTL_SECONDS + settings.request_timeout_seconds
            assert last_call_done <= pause, \
                f"{where}: the last call may end {last_call_done} s after termination, the preStop sleep is {pause} s"


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
            assert "replicas" not in deployment["spec"], \
                f"{source}: {name} sets replicas under an HPA: every `kubectl apply -k` would fight the autoscaler"


def test_hard_topology_spread_counts_only_nodes_the_pods_tolerate():
    """With the default nodeTaintsPolicy (Ignore), tainted GPU or system nodes count as domains with
    no pods: a DoNotSchedule spread over hostnames can never be satisfied and new pods stay Pending."""
    seen = 0
    for source, workload in all_workloads():
        for constraint in pod_spec(workload).get("topologySpreadConstraints", []):
            seen += 1
            assert constraint.get("nodeTaintsPolicy") == "Honor", \
                f"{source}: {workload['metadata']['name']} spreads over {constraint['topologyKey']} counting tainted nodes"
    assert seen >= 4


# --------------------------------------------------------------------------- model server

def test_model_server_configmap_holds_serving_configs():
    for source in DEPLOYABLE + ("overlays/canary", "overlays/canary-gpu"):
        data = config_map(source, "model-server-config")["data"]
        assert set(data) == set(k8s_check.SERVING_CONFIGS), source
        for name, text in data.items():
            expected = ROOT / "serving" / name
            if source in GPU_SOURCES and name == "batching.config":
                expected = K8S / "components" / "gpu" / "batching.config"
            assert text == expected.read_text(), f"{source}: ConfigMap {name} differs from {expected.relative_to(ROOT)}"
        for deployment in model_server_deployments(source):
            c = pod_spec(deployment)["containers"][0]
            mount = config_mount(c)
            f = flags(c)
            assert f["model_config_file"] == f"{mount}/models.config"
            assert f["batching_parameters_file"] == f"{mount}/batching.config" and f["enable_batching"] == "true"
            assert f["monitoring_config_file"] == f"{mount}/monitoring.config"


PYTHON_SERVING_ONLY_FLAGS = {"bind_address", "shutdown_grace_period_seconds"}


def test_model_server_flags_and_configs_are_what_tf_serving_accepts():
    """The rendered args and ConfigMap files go through serving/'s parsers, which read flags and
    config files as tensorflow_model_server does (a bad file stops the real server at start-up)."""
    from serving import configs, flags as serving_flags

    known = {f.name for f in dataclasses.fields(serving_flags.ServerOptions)}
    known = (known | serving_flags.ACCEPTED_WITHOUT_EFFECT) - PYTHON_SERVING_ONLY_FLAGS
    for source in DEPLOYABLE:
        c = container(source, "model-server")
        assert c["command"] == ["tensorflow_model_server"]
        for name in flags(c):
            assert name in known, f"{source}: --{name} is not a tensorflow_model_server flag"
        options = model_server_options(source)
        models = configs.model_server_config(options)
        assert [m.name for m in models.model_config_list.config][0] == default_model()
        for model in models.model_config_list.config:
            assert model.base_path == f"/models/{model.name}", "serving/Dockerfile copies models/ to /models"
        batching = configs.batching_settings(options)
        assert batching is not None and batching.max_batch_size >= 1
        assert configs.monitoring_settings(options).prometheus_enabled, f"{source}: no Prometheus metrics"
        assert dict(configs.grpc_channel_arguments(options))["grpc.max_connection_age_ms"] > 0


def test_a_model_that_cannot_load_stops_the_pod_in_seconds():
    """TF Serving retries a failed load 5 times a minute apart by default: a pod whose model cannot be
    read spends 5 minutes 'starting' before it fails. Retry once, shortly, then give up."""
    for source in DEPLOYABLE:
        options = model_server_options(source)
        wasted = options.max_num_load_retries * options.load_retry_interval_micros / 1e6
        assert options.max_num_load_retries <= 1 and wasted <= 10, \
            f"{source}: a failing load is retried {options.max_num_load_retries} times, {wasted:.0f} s in all"


def test_model_server_args_repeat_serving_run_sh(tmp_path):
    """serving/run.sh is the image's entrypoint and the one list of the server's flags; the
    Deployment spells them out (visible in `kubectl describe`). Run run.sh as the image does,
    with a stand-in tensorflow_model_server that prints its arguments, and compare."""
    fake = tmp_path / "tensorflow_model_server"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    for source in DEPLOYABLE + ("overlays/canary", "overlays/canary-gpu"):
        for deployment in model_server_deployments(source):
            c = pod_spec(deployment)["containers"][0]
            proc = subprocess.run(["bash", str(ROOT / "serving" / "run.sh")], capture_output=True, text=True,
                                  timeout=30, env={"PATH": f"{tmp_path}:/usr/bin:/bin", "CONFIG_DIR": config_mount(c),
                                                   "MODELS_DIR": "/models"})
            assert proc.returncode == 0, proc.stderr
            run_sh = flags({"args": proc.stdout.split()})
            assert run_sh, "run.sh passed no flags"
            deployed = flags(c)
            for name, value in run_sh.items():
                assert deployed.get(name) == value, f"{source}: --{name}={deployed.get(name)}, run.sh sets {value}"


def test_model_server_ports_and_probes_match_its_flags():
    monitoring = config_map("overlays/cpu", "model-server-config")["data"]["monitoring.config"]
    metrics_path = re.search(r'path:\s*"([^"]+)"', monitoring).group(1)
    for source in DEPLOYABLE + ("overlays/canary", "overlays/canary-gpu"):
        for deployment in model_server_deployments(source):
            c = pod_spec(deployment)["containers"][0]
            f = flags(c)
            grpc_port, rest_port = int(f["port"]), int(f["rest_api_port"])
            assert port_number(c, "grpc") == grpc_port and port_number(c, "http") == rest_port
            assert port_number(c, c["startupProbe"]["tcpSocket"]["port"]) == rest_port
            assert port_number(c, c["livenessProbe"]["tcpSocket"]["port"]) == rest_port
            script = c["readinessProbe"]["exec"]["command"][-1]
            assert f"/dev/tcp/127.0.0.1/{rest_port}" in script
            assert f"{config_mount(c)}/models.config" in script, "readiness must read the mounted models.config"
            annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == str(rest_port)
            assert annotations["prometheus.io/path"] == metrics_path


def test_no_probe_names_a_model():
    """The models come from models.config (a ConfigMap); a probe that names one breaks the day it is
    renamed or another model is deployed on its own."""
    names = set(re.findall(r'name:\s*"([^"]+)"', config_map("overlays/cpu", "model-server-config")["data"]["models.config"]))
    assert names
    for source, workload in all_workloads():
        for c in containers(workload):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                text = json.dumps(c.get(probe, {}))
                for name in names:
                    assert not re.search(rf"\b{re.escape(name)}\b", text), \
                        f"{source}: {workload['metadata']['name']}/{c['name']} {probe} names model {name!r}"


def test_gpu_only_where_the_gpu_component_is():
    for source, workload in all_workloads():
        for c in containers(workload):
            has_gpu = "nvidia.com/gpu" in c["resources"].get("limits", {})
            wants_gpu = source in GPU_SOURCES and c["name"] == "model-server"
            assert has_gpu == wants_gpu, f"{source}: {c['name']} GPU limit {'present' if has_gpu else 'missing'}"


@pytest.mark.parametrize("source", GPU_SOURCES)
def test_gpu_model_servers_schedule_roll_and_start_on_any_gpu_cluster(source):
    cpu_flags = flags(container("overlays/cpu", "model-server"))
    tuned = {"tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism"}
    for deployment in model_server_deployments(source):
        where = f"{source}: {deployment['metadata']['name']}"
        spec = pod_spec(deployment)
        c = spec["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and re.search(r":[^/@]*-gpu(@|$)", c["image"]), where
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]), f"{where}: no GPU toleration"
        # The GPU limit is what places the pod; a label only GPU Feature Discovery sets would leave it
        # Pending on clusters without it.
        assert "nvidia.com/gpu.present" not in spec.get("nodeSelector", {}), f"{where}: needs GPU Feature Discovery"
        rolling = deployment["spec"]["strategy"]["rollingUpdate"]
        assert rolling["maxSurge"] == 0 and rolling["maxUnavailable"] >= 1, \
            f"{where}: a surge pod waits forever for a GPU when all are in use"
        e = env(c)
        cache = e.get("CUDA_CACHE_PATH")
        mount = next((m for m in c["volumeMounts"] if cache and m["mountPath"] == cache), None)
        assert mount and any(v["name"] == mount["name"] and "emptyDir" in v for v in spec["volumes"]), \
            f"{where}: CUDA's JIT cache must be on a writable emptyDir (the root filesystem is read-only)"
        assert int(e.get("CUDA_CACHE_MAXSIZE", 0)) >= 2**30, f"{where}: CUDA's default cache cap evicts kernels"
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= PTX_JIT_SECONDS, \
            f"{where}: the startup probe kills the pod during CUDA's first PTX compilation"
        gpu_flags = flags(c)
        assert {k: v for k, v in cpu_flags.items() if k not in tuned} == \
            {k: v for k, v in gpu_flags.items() if k not in tuned}, f"{where}: args drifted from the base's"
        assert int(gpu_flags["tensorflow_intra_op_parallelism"]) == _cpus(c["resources"]["limits"]["cpu"])
    if source == "overlays/gpu":
        assert one(source, "HorizontalPodAutoscaler", "model-server")["spec"]["maxReplicas"] <= 4


def test_thread_pools_follow_the_cpu_limit():
    for source in DEPLOYABLE:   # TensorFlow's thread pools sized to the CPU limit, not the node
        c = container(source, "model-server")
        assert int(flags(c)["tensorflow_intra_op_parallelism"]) == _cpus(c["resources"]["limits"]["cpu"])


def test_runtime_class_component_sets_the_nvidia_runtime_on_model_servers_only():
    source = "overlays/gpu+nvidia-runtime-class"
    for workload in objects(source, "Deployment"):
        runtime = pod_spec(workload).get("runtimeClassName")
        is_model_server = workload["metadata"]["name"].startswith("model-server")
        assert runtime == ("nvidia" if is_model_server else None), f"{workload['metadata']['name']}: {runtime}"
    assert "runtimeClassName" not in pod_spec(one("overlays/gpu", "Deployment", "model-server"))


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """An HTTP handler that answers with `reply` and logs nothing."""

    def reply(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler], listen: bool = True) -> Iterator[int]:
    """A port on 127.0.0.1 where `handler` answers (listen=False: a port nothing listens on)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if not listen:
        server.server_close()
        yield server.server_address[1]
        return
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class _FakeTfServingStatus(QuietHandler):
    """Answers GET /v1/models/<name> the way tensorflow_model_server's REST API does."""

    states: dict[str, str] = {}

    def do_GET(self):  # noqa: N802 (http.server's naming)
        model = self.path.removeprefix("/v1/models/")
        if model not in self.states:
            self.reply(404, b'{ "error": "Could not find any versions of model %s" }' % model.encode(), "application/json")
            return
        self.reply(200, ('{\n "model_version_status": [\n  {\n   "version": "1",\n   "state": "%s",\n'
                         '   "status": {\n    "error_code": "OK",\n    "error_message": ""\n   }\n  }\n ]\n}\n'
                         % self.states[model]).encode(), "application/json")


def fake_tf_serving(states: dict[str, str] | None):
    """A port where a fake TF Serving answers with `states`; None: a port nothing listens on."""
    return serving(type("Handler", (_FakeTfServingStatus,), {"states": states or {}}), listen=states is not None)


@pytest.mark.parametrize("models, states, ready", [
    (["fashion"], {"fashion": "AVAILABLE"}, True),
    (["fashion", "scenes"], {"fashion": "AVAILABLE", "scenes": "AVAILABLE"}, True),
    (["fashion", "scenes"], {"fashion": "AVAILABLE", "scenes": "LOADING"}, False),
    (["fashion", "scenes"], {"fashion": "END", "scenes": "AVAILABLE"}, False),
    (["fashion", "scenes"], {"fashion": "AVAILABLE"}, False),          # one model unknown to the server
    (["fashion"], None, False),                                        # nothing listening
    ([], {"fashion": "AVAILABLE"}, False),                             # a config naming no model
])
def test_model_server_readiness_requires_every_configured_model_available(tmp_path, models, states, ready):
    """Runs the rendered exec probe itself (bash /dev/tcp + grep), with a models.config naming
    `models`, against an HTTP server answering like TF Serving: a 200 alone must not pass, only a
    version in state AVAILABLE, for every model the config names."""
    c = container("overlays/cpu", "model-server")
    mount, rest_port = config_mount(c), flags(c)["rest_api_port"]
    (tmp_path / "models.config").write_text("model_config_list {\n" + "".join(
        f'  config {{\n    name: "{m}"\n    base_path: "/models/{m}"\n    model_platform: "tensorflow"\n  }}\n'
        for m in models) + "}\n")
    command = list(c["readinessProbe"]["exec"]["command"])
    with fake_tf_serving(states) as port:
        command[-1] = (command[-1].replace(f"{mount}/models.config", f"{tmp_path}/models.config")
                                  .replace(f"/dev/tcp/127.0.0.1/{rest_port}", f"/dev/tcp/127.0.0.1/{port}"))
        proc = subprocess.run(command, capture_output=True, text=True, timeout=c["readinessProbe"]["timeoutSeconds"])
    assert (proc.returncode == 0) == ready, f"{models} {states}: exit {proc.returncode} {proc.stderr}"


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


def test_model_server_hpa_target_is_reachable_and_means_saturation():
    """The target (requests in flight per pod) must be (1) no higher than the batch threads a pod runs
    at once, beyond which requests queue inside TF Serving, and (2) below what the gateways can send a
    pod (each sends at most max_concurrent_batches calls per pod): otherwise saturation shows up as
    429s from the gateways' full queues and never as a scale-up."""
    from serving import configs

    for source in DEPLOYABLE:
        hpa = one(source, "HorizontalPodAutoscaler", "model-server")
        target = next(float(m["pods"]["target"]["averageValue"]) for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
        threads = configs.batching_settings(model_server_options(source)).num_batch_threads
        assert target <= threads, f"{source}: target {target} in flight per pod, but a pod runs {threads} batches at once"
        gateways = one(source, "HorizontalPodAutoscaler", "gateway")["spec"]["minReplicas"]
        per_pod = gateways * gateway_settings(source).max_concurrent_batches
        assert target < per_pod, f"{source}: target {target}, but {gateways} gateways send a pod at most {per_pod}"


# --------------------------------------------------------------------------- gateway

def test_gateway_backend_is_the_headless_model_server_service():
    for source in DEPLOYABLE:
        backend = env(container(source, "gateway"))["GATEWAY_BACKEND"]
        match = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", backend)
        assert match, f"{source}: GATEWAY_BACKEND {backend!r} is not dns:///<svc>.<ns>.svc.cluster.local:<port>"
        name, namespace, port = match.group(1), match.group(2), int(match.group(3))
        service = one(source, "Service", name)
        assert service["metadata"]["namespace"] == namespace
        assert service["spec"].get("clusterIP") == "None", "per-pod routing needs a headless Service"
        assert not service["spec"].get("publishNotReadyAddresses"), "unready pods would be resolved"
        service_port = next((p for p in service["spec"]["ports"] if p["port"] == port), None)
        assert service_port, f"{source}: Service {name} has no port {port}"
        model_server = container(source, "model-server")
        assert port_number(model_server, service_port["targetPort"]) == int(flags(model_server)["port"])
        pod_labels = one(source, "Deployment", "model-server")["spec"]["template"]["metadata"]["labels"]
        assert _selects(service["spec"]["selector"], pod_labels)
        assert gateway_settings(source).backend == backend


def test_services_target_ports_their_pods_declare():
    for source in DEPLOYABLE:
        for service in objects(source, "Service"):
            matching = [d for d in objects(source, "Deployment")
                        if _selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
            assert matching, f"{source}: Service {service['metadata']['name']} selects no pods"
            for p in service["spec"]["ports"]:
                port_number(pod_spec(matching[0])["containers"][0], p["targetPort"])


def test_gateway_env_and_config_are_valid_settings():
    """The gateway's own settings model loads the rendered config file with the rendered env."""
    from gateway import settings as gateway_settings_module

    for source in DEPLOYABLE:
        c = container(source, "gateway")
        for name in env(c):
            assert name.startswith("GATEWAY_") and name[8:].lower() in gateway_settings_module.Settings.model_fields, \
                f"{source}: {name} is not a gateway setting"
        s = gateway_settings(source)
        assert s.grpc_port == port_number(c, "grpc") and s.http_port == port_number(c, "http")
        assert s.host == "0.0.0.0"
        assert s.default_model == default_model()
        assert s.decode_workers <= 2 * _cpus(c["resources"]["limits"]["cpu"])
        # Routing keys reload from the mounted file: a subPath mount would never see an update.
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(Path(env(c)["GATEWAY_CONFIG"]).parent))
        assert "subPath" not in mount and s.config_reload_seconds > 0


def test_gateway_probes_use_its_ports_paths_and_health_service():
    from imgclass_client.proto.classifier.v1 import classifier_pb2

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


# --------------------------------------------------------------------------- network policies

def _dns_peers_and_ports(policy: dict) -> tuple[list[dict], set[tuple[str, int]]]:
    rule = policy["egress"][0]
    return rule["to"], {(p["protocol"], p["port"]) for p in rule["ports"]}


def test_network_policies_only_open_what_is_needed():
    for source in DEPLOYABLE:
        policies = {p["metadata"]["name"]: p["spec"] for p in objects(source, "NetworkPolicy")}
        deny = policies["default-deny-all"]
        assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
        assert "ingress" not in deny and "egress" not in deny
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


def test_dns_is_reachable_through_kube_dns_and_nodelocal_dnscache():
    """NodeLocal DNSCache answers on 169.254.20.10 from the host network, which no pod selector
    matches: a policy that only admits the kube-dns pods leaves such clusters without DNS."""
    for source in DEPLOYABLE:
        dns = one(source, "NetworkPolicy", "allow-dns-egress")["spec"]
        assert dns["podSelector"] == {} and dns["policyTypes"] == ["Egress"]
        peers, ports = _dns_peers_and_ports(dns)
        assert ports == {("UDP", 53), ("TCP", 53)}
        assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}} in peers
        assert {"ipBlock": {"cidr": "169.254.20.10/32"}} in peers, f"{source}: NodeLocal DNSCache is blocked"


def test_object_storage_component_opens_https_and_the_metadata_servers():
    """Workload identity hands out tokens from the node's metadata server: without egress to it the
    first read of a gs:// model hangs and fails, however open 443 is."""
    source = "overlays/cpu+object-storage"
    policy = one(source, "NetworkPolicy", "model-server-object-storage")["spec"]
    assert policy["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "model-server"}}
    opened = set()
    for rule in policy["egress"]:
        peers = [p["ipBlock"]["cidr"] for p in rule.get("to", [])] or ["*"]
        opened |= {(peer, p["port"]) for peer in peers for p in rule["ports"] if p["protocol"] == "TCP"}
    assert ("*", 443) in opened
    assert {("169.254.169.254/32", 80), ("169.254.169.252/32", 988), ("169.254.170.23/32", 80)} <= opened


# --------------------------------------------------------------------------- canary and load test

@pytest.mark.parametrize("source, stable_source", [("overlays/canary", "overlays/cpu"),
                                                   ("overlays/canary-gpu", "overlays/gpu")])
def test_canary_is_one_pod_of_a_second_track_behind_the_same_service(source, stable_source):
    canary = one(source, "Deployment", "model-server-canary")
    labels = canary["spec"]["template"]["metadata"]["labels"]
    assert labels["track"] == "canary" and canary["spec"]["selector"]["matchLabels"]["track"] == "canary"
    assert canary["spec"]["replicas"] == 1
    assert not objects(source, "HorizontalPodAutoscaler"), "the canary is a sample, not capacity"
    stable = one(stable_source, "Deployment", "model-server")
    assert not _selects(stable["spec"]["selector"]["matchLabels"], labels), "stable would adopt canary pods"
    assert _selects(one(stable_source, "Service", "model-server")["spec"]["selector"], labels)
    assert not _selects(one(stable_source, "HorizontalPodAutoscaler", "model-server")["spec"]["scaleTargetRef"], labels)
    # The same pod as the stable track's but for the image and the track: same flags, probes,
    # resources, GPU or not. A canary that differs in anything else compares more than the version.
    ignore = {"image"}
    c, s = pod_spec(canary)["containers"][0], pod_spec(stable)["containers"][0]
    assert {k: v for k, v in c.items() if k not in ignore} == {k: v for k, v in s.items() if k not in ignore}, \
        f"{source}'s model-server container differs from {stable_source}'s"
    assert pod_spec(canary).get("tolerations") == pod_spec(stable).get("tolerations")
    assert canary["spec"]["strategy"] == stable["spec"]["strategy"]


def test_canary_gpu_keeps_its_gpu_image_whatever_the_cpu_canary_is_pinned_to(tmp_path):
    """Both canary overlays pin their own candidate (k8s/README.md, Canary). Were canary-gpu built on
    ../canary, the CPU candidate pinned there (a registry name) would no longer match canary-gpu's
    `images:` entry, and the GPU pod would run the CPU build."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    pushed = "registry.example.com/imgclass/model-server:0.2.0"
    kustomization = copy / "overlays" / "canary" / "kustomization.yaml"
    data = yaml.safe_load(kustomization.read_text())
    data["images"] = [{"name": "imgclass/model-server", "newName": pushed, "digest": "sha256:" + "0" * 64}]
    kustomization.write_text(yaml.safe_dump(data))
    assert {c["image"] for o in k8s_check.render(copy / "overlays" / "canary") if o["kind"] == "Deployment"
            for c in pod_spec(o)["containers"]} == {f"{pushed}@sha256:{'0' * 64}"}
    gpu = [c["image"] for o in k8s_check.render(copy / "overlays" / "canary-gpu") if o["kind"] == "Deployment"
           for c in pod_spec(o)["containers"]]
    assert gpu == [c["image"] for c in pod_spec(one("overlays/canary-gpu", "Deployment", "model-server-canary"))["containers"]]
    assert all(re.search(r":[^/@]*-gpu(@|$)", image) for image in gpu), gpu


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


# --------------------------------------------------------------------------- the docs

# Repository paths named in the manifests' comments and the runbook (k8s-relative ones too).
_PATH = re.compile(r"(?<![\w./-])((?:k8s|serving|gateway|tools|tests|loadtest|training|models|examples|docs|"
                   r"base|overlays|components|monitoring)/[\w.*/-]*[\w*])")


def test_every_file_the_manifests_and_runbook_name_exists():
    """Comments and the runbook that point at a file that does not exist (the model-server HPA's
    comment named one) send the on-call engineer nowhere."""
    sources = [*K8S.rglob("*.yaml"), K8S / "README.md", *k8s_check.DOCKERFILES, ROOT / "serving" / "run.sh"]
    missing = []
    for path in sources:
        for name in set(_PATH.findall(path.read_text())):
            if "<" in name or name.startswith(("overlays/<", "models/fashion/")):
                continue
            candidates = [ROOT / name, K8S / name, path.parent / name]
            if not any(c.exists() or (("*" in name) and list(c.parent.glob(c.name))) for c in candidates):
                missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, "named but missing:\n" + "\n".join(missing)


def test_docs_say_what_tf_serving_does():
    readme = (K8S / "README.md").read_text()
    texts = {p: p.read_text() for p in [K8S / "README.md", ROOT / "serving" / "Dockerfile", *K8S.rglob("*.yaml")]}
    # TF Serving dropped its S3 filesystem in 2.7: only gs:// (and HDFS with libhdfs) remain native.
    for path, text in texts.items():
        for line in text.splitlines():
            if "s3://" in line:
                assert re.search(r"\bno s3://|\bnot\b|since 2\.7", line), f"{path.relative_to(ROOT)}: {line.strip()}"
    # A full batch queue answers UNAVAILABLE ("... Rejecting"), never RESOURCE_EXHAUSTED.
    section = readme.split("### ModelServerErrors", 1)[1].split("\n### ", 1)[0]
    assert "UNAVAILABLE" in section and "RESOURCE_EXHAUSTED" not in section, section
    rule = next(r for r in alert_rules() if r.get("alert") == "ModelServerErrors")
    assert "RESOURCE_EXHAUSTED" not in rule["annotations"]["description"]
    # Which versions a server serves is models.config's version policy, not "the highest".
    policy = re.search(r"latest\s*\{\s*num_versions:\s*(\d+)", (ROOT / "serving" / "models.config").read_text())
    assert policy and "serves the highest version" not in readme
    count = {"1": "newest", "2": "two newest", "3": "three newest"}[policy.group(1)]
    assert count in readme, f"k8s/README.md does not say that TF Serving serves the {count} versions"


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
# The fleet-aware gateway's metrics (gateway/metrics.py). Where the code defines one, its own
# labels are used instead, so a difference between the two is caught there.
GATEWAY_FLEET_METRICS = {
    "gateway_endpoints": {"state"},
    "gateway_endpoint_versions": {"endpoint", "model", "version"},
    "gateway_model_version": {"model"},
    "gateway_decisions_total": {"model", "version", "label", "confident"},
    "gateway_requests_total": {"transport", "route", "model", "status", "version"},
    "gateway_shadow_comparisons_total": {"model", "candidate_version", "top1", "decision"},
    "gateway_shadow_score_delta_bucket": {"model", "candidate_version", "le"},
    "gateway_shadow_score_delta_sum": {"model", "candidate_version"},
    "gateway_shadow_score_delta_count": {"model", "candidate_version"},
    "gateway_shadow_skipped_total": {"model", "reason"},
}
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

    from_code: dict[str, set[str] | None] = {}
    gateway_metrics = Metrics()
    for family in gateway_metrics.registry.collect():     # process_*, python_* collectors
        for sample in family.samples:
            from_code.setdefault(sample.name, set(sample.labels))
    for metric in vars(gateway_metrics).values():
        if isinstance(metric, MetricWrapperBase):
            labels = set(metric._labelnames)
            if metric._type == "counter":
                from_code[metric._name + "_total"] = labels
            elif metric._type == "histogram":
                from_code.update({metric._name + "_bucket": labels | {"le"}, metric._name + "_sum": labels,
                                  metric._name + "_count": labels})
            else:
                from_code[metric._name] = labels
    known = {**GATEWAY_FLEET_METRICS, **from_code}
    for name, labels in TF_SERVING_METRICS.items():
        if name in TF_SERVING_HISTOGRAMS:
            known[name + "_bucket"] = None if labels is None else labels | {"le"}
            known[name + "_sum"] = known[name + "_count"] = labels
        else:
            known[name] = labels
    known.update(KUBE_STATE_METRICS)
    return known


def _children(node) -> Iterator:
    for attr in ("lhs", "rhs", "expr", "vector_selector", "param"):
        child = getattr(node, attr, None)
        if child is not None:
            yield child
    yield from getattr(node, "args", None) or []


def _selectors(node) -> Iterator:
    import promql_parser

    if isinstance(node, promql_parser.VectorSelector):
        yield node
    for child in _children(node):
        yield from _selectors(child)


def _aggregations(node) -> Iterator:
    if type(node).__name__ == "AggregateExpr":
        yield node
    for child in _children(node):
        yield from _aggregations(child)


def _grouping_labels(node) -> Iterator[str]:
    for aggregation in _aggregations(node):
        yield from getattr(getattr(aggregation, "modifier", None), "labels", None) or []


def _parse(expr: str, where: str):
    import promql_parser

    try:
        return promql_parser.parse(expr)
    except ValueError as exc:
        raise AssertionError(f"{where}: PromQL does not parse ({exc}): {expr}") from None


def assert_promql_uses_known_metrics(expr: str, where: str) -> None:
    tree = _parse(expr, where)
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
    max_queue = gateway_settings("overlays/cpu").max_queue
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


def test_a_default_kube_prometheus_stack_loads_the_monitors_and_rules():
    """kube-prometheus-stack's Prometheus selects PodMonitors and PrometheusRules labelled
    `release: <its Helm release>` unless told otherwise: without the label nothing is scraped (the
    model-server HPA has no metric) and no alert exists."""
    operator_objects = objects("monitoring", "PodMonitor") + objects("monitoring", "PrometheusRule")
    assert len(operator_objects) >= 3
    for obj in operator_objects:
        assert obj["metadata"].get("labels", {}).get("release") == PROMETHEUS_RELEASE, \
            f"{obj['kind']}/{obj['metadata']['name']} would be ignored by a default kube-prometheus-stack"


def _dashboard_targets() -> list[tuple[str, str]]:
    dashboard = config_map("monitoring", "imgclass-dashboard")
    board = json.loads(dashboard["data"]["imgclass.json"])
    assert dashboard["metadata"]["labels"].get("grafana_dashboard") == "1"
    return [(p["title"], t["expr"].replace("$__rate_interval", "5m").replace("$namespace", NAMESPACE))
            for p in board["panels"] for t in p.get("targets", [])]


def test_grafana_dashboard_queries_real_metrics():
    targets = _dashboard_targets()
    assert len(targets) >= 10
    for title, expr in targets:
        assert_promql_uses_known_metrics(expr, f"dashboard panel {title!r}")


def test_dashboard_shows_version_skew_across_the_fleet():
    """During a rollout or a pod canary the model servers serve different versions. max() of the
    version shows only the newest and hides the skew; counting pods per version shows it."""
    counted = False
    for title, expr in _dashboard_targets():
        tree = _parse(expr, title)
        for aggregation in _aggregations(tree):
            names = {s.name for s in _selectors(aggregation)}
            op = str(aggregation.op).lower()
            if "gateway_model_version" in names or "gateway_endpoint_versions" in names:
                assert "max" not in op and "min" not in op, f"panel {title!r}: {expr} hides version skew"
            grouping = getattr(aggregation.modifier, "labels", None) or []
            if "count" in op and "version" in grouping and "gateway_endpoint_versions" in names:
                counted = True
    assert counted, "no dashboard panel counts model-server pods by version (count by (version) (gateway_endpoint_versions))"
