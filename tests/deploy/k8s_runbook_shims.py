"""The commands tests/deploy/test_k8s_runbook.py puts on PATH while it runs k8s/README.md's bash blocks.

Each is a function taking argv and returning an exit code; `install(bin_dir, env)` writes a small
executable per command that calls it. They log what they did, one JSON line each, to the file
named by $RUNBOOK_LOG (with $RUNBOOK_LINE, the runbook line the shell was on).

- kubectl: the real kubectl (from the venv) against the stand-in API server in $KUBECONFIG. Changes
  run with --dry-run=client (and --validate=false: `make k8s-check` validates the schemas; the
  stand-in has no OpenAPI documents); `apply -k` first renders the directory and refuses images that
  the digest policy rejects; `edit` becomes a `get` of the same object (no editor here); exec,
  attach, cp and port-forward succeed once kubectl has resolved the pod, container and port and
  the stand-in refuses the stream.
- docker: `inspect --format ... IMAGE` prints IMAGE's name with a digest made from it; everything
  else does nothing.
- kustomize: `edit set image` as kustomize's own command does it (kustomize/commands/edit/set/
  setimage.go: `name=newName[:tag][@digest]` replaces that name's `images:` entry).
- runbook-merge TARGET SNIPPET: a ```yaml block of the runbook merged into the file it names (dicts
  deep, lists appended); a gateway config file must then load through the gateway's settings model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STREAMING_VERBS = {"exec", "attach", "cp", "port-forward"}
DRY_RUN_VERBS = {"apply", "create", "delete", "replace", "patch", "scale", "annotate", "label", "autoscale",
                 "expose", "run", "set"}
GLOBAL_FLAGS_WITH_VALUE = {"-n", "--namespace", "--context", "--kubeconfig", "-s", "--server", "--cluster", "--user",
                           "--request-timeout"}


_STARTED = time.monotonic()


def _log(**entry) -> None:
    entry["line"] = int(os.environ.get("RUNBOOK_LINE") or 0)
    entry["seconds"] = round(time.monotonic() - _STARTED, 3)
    with open(os.environ["RUNBOOK_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(entry) + "\n")


def _verbs(argv: list[str]) -> list[str]:
    words, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--":
            break
        elif arg in GLOBAL_FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            words.append(arg)
    return words


def kubectl(argv: list[str]) -> int:
    from k8s_fake_apiserver import STREAMING_REFUSED

    real = os.environ["RUNBOOK_REAL_KUBECTL"]
    words = _verbs(argv)
    verb = words[0] if words else ""
    sub = words[1] if len(words) > 1 else ""
    run = list(argv)
    note = ""
    if verb == "edit":
        run = ["get" if a == "edit" else a for a in argv] + ["-o", "yaml"]
        note = "edit: fetched instead (no editor)"
    elif (verb in DRY_RUN_VERBS or (verb == "rollout" and sub in ("undo", "restart"))) \
            and not any(a.startswith("--dry-run") for a in argv):
        run.append("--dry-run=client")
        note = "--dry-run=client"
    if verb == "apply":
        run.append("--validate=false")
        problem = _unpinned_images(argv)
        if problem:
            print(problem, file=sys.stderr)
            _log(tool="kubectl", argv=argv, rc=1, stderr=problem, note="image policy")
            return 1
    try:
        proc = subprocess.run([real, *run], capture_output=True, text=True, timeout=60)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired:
        rc, out, err = 124, "", "timed out after 60 s"
    if rc != 0 and verb in STREAMING_VERBS and STREAMING_REFUSED in err:
        rc, err, note = 0, "", "resolved; the stream itself is not emulated"
    sys.stdout.write(out)
    sys.stderr.write(err)
    _log(tool="kubectl", argv=argv, rc=rc, stderr=err[-2000:], note=note)
    return rc


def _unpinned_images(argv: list[str]) -> str:
    """Why `kubectl apply -k DIR` would deploy an image the digest policy refuses ('' if none)."""
    sys.path.insert(0, str(ROOT))
    from tools import k8s_check

    if "-k" not in argv:
        return ""
    target = Path(argv[argv.index("-k") + 1])
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    try:
        objects = k8s_check.render(target.resolve())
    except k8s_check.CheckError as exc:
        return str(exc)
    problems = []
    for obj in objects:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            problem = k8s_check.image_problem(c["image"], version)
            if problem:
                problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {problem}")
    return "\n".join(problems)


def docker(argv: list[str]) -> int:
    if argv[:1] == ["inspect"]:
        image = argv[-1]
        name = re.sub(r":[^/:@]+$", "", image)
        print(f"{name}@sha256:{hashlib.sha256(image.encode()).hexdigest()}")
    _log(tool="docker", argv=argv, rc=0, note="stand-in")
    return 0


_TAG = re.compile(r"^(.*):([a-zA-Z0-9._-]*)$")


def kustomize(argv: list[str]) -> int:
    if argv[:3] != ["edit", "set", "image"] or len(argv) < 4:
        print(f"kustomize stand-in: only `edit set image` is emulated, not {argv}", file=sys.stderr)
        _log(tool="kustomize", argv=argv, rc=1, stderr="not emulated")
        return 1
    import yaml

    path = Path("kustomization.yaml")
    data = yaml.safe_load(path.read_text())
    images = {i["name"]: i for i in data.get("images", [])}
    for arg in argv[3:]:
        name, sep, new = arg.partition("=")
        if not sep:
            print(f"kustomize stand-in: {arg!r}: only <image>=<newimage>... is emulated", file=sys.stderr)
            return 1
        entry = {"name": name}
        if "@" in new:
            new_name, digest = new.split("@", 1)
            entry.update(newName=new_name, digest=digest)
        elif m := _TAG.match(new):
            entry.update(newName=m.group(1), newTag=m.group(2))
        elif new:
            entry["newName"] = new
        images[name] = entry
    data["images"] = [images[k] for k in sorted(images)]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    _log(tool="kustomize", argv=argv, rc=0, note=str(path.resolve()))
    return 0


def _merge(base, extra):
    if isinstance(base, dict) and isinstance(extra, dict):
        merged = dict(base)
        for key, value in extra.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(extra, list):
        return base + extra
    return extra


def runbook_merge(argv: list[str]) -> int:
    import yaml

    target, snippet = Path(argv[0]), Path(argv[1])
    merged = _merge(yaml.safe_load(target.read_text()) or {}, yaml.safe_load(snippet.read_text()) or {})
    target.write_text(yaml.safe_dump(merged, sort_keys=False))
    rc, err = 0, ""
    if target.name == "config.yaml" and target.parent.name == "gateway":
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env["GATEWAY_CONFIG"] = str(target.resolve())
        proc = subprocess.run([sys.executable, "-c", "from gateway.settings import load_settings; load_settings()"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        rc, err = proc.returncode, proc.stderr[-2000:]
        sys.stderr.write(err)
    _log(tool="runbook-merge", argv=argv, rc=rc, stderr=err)
    return rc


COMMANDS = {"kubectl": kubectl, "docker": docker, "kustomize": kustomize, "runbook-merge": runbook_merge}


def install(bin_dir: Path) -> None:
    """An executable per command in `bin_dir`, running this module's function of the same name."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    for name in COMMANDS:
        script = bin_dir / name
        script.write_text(f"#!{sys.executable}\nimport sys\nsys.path[:0] = [{str(here)!r}, {str(ROOT)!r}]\n"
                          f"import k8s_runbook_shims\nsys.exit(k8s_runbook_shims.COMMANDS[{name!r}](sys.argv[1:]))\n")
        script.chmod(0o755)
