"""Render the gateway's settings as the Markdown tables in README.md, from the settings model itself.

    python -m tools.settings_doc           # print the tables
    python -m tools.settings_doc --write   # replace them in README.md between the markers

tests/test_readme.py fails when README.md differs from what this renders, so a setting cannot be
added, renamed or given a new default without the README following.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import BaseModel

from gateway.settings import NOT_FLAGS, ModelSettings, Settings, env_name, flag_name

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- settings:begin (python -m tools.settings_doc --write) -->", "<!-- settings:end -->"


def _default(field) -> str:
    factory = field.default_factory
    if factory is not None and factory.__name__.startswith("_default"):
        return "computed, see meaning"  # depends on the machine, e.g. the number of CPUs
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    if value is None or value == [] or value == {}:
        return "none"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def gateway_table() -> str:
    rows = ["| setting | flag | environment | default | meaning |", "|---|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        flag = "– (YAML or environment)" if name in NOT_FLAGS else f"`{flag_name(name)}`"
        rows.append(f"| `{name}` | {flag} | `{env_name(name)}` | `{_default(field)}` "
                    f"| {_cell(field.description or '')} |")
    return "\n".join(rows)


def _model_rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _model_rows(annotation, f"{prefix}{name}.")
            continue
        rows.append(f"| `{prefix}{name}` | `{_default(field)}` | {_cell(field.description or '')} |")
    return rows


def model_table() -> str:
    return "\n".join(["| key under `models.<name>` | default | meaning |", "|---|---|---|",
                      *_model_rows(ModelSettings, "")])


def render() -> str:
    return (f"{BEGIN}\n{gateway_table()}\n\nPer model, in the YAML file (or `GATEWAY_MODELS` as JSON, or "
            f"`GATEWAY_MODELS__<NAME>__<KEY>`):\n\n{model_table()}\n{END}")


def replace_in(text: str) -> str:
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + render() + text[stop:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"update {README.name} in place")
    args = parser.parse_args(argv)
    if args.write:
        README.write_text(replace_in(README.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
