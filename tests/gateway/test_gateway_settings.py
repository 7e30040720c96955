"""The gateway's settings (gateway/settings.py; README, "Settings"): sources, precedence, validation.

settings.py uses no wire protos, so it is imported in-process; the start-up error path is checked
on the real `python -m gateway` in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from gateway.settings import ModelSettings, Settings, SettingsError, load_settings

pytestmark = pytest.mark.unit  # in-process, no model, no server: make test-fast

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "gateway" / "config.example.yaml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No GATEWAY_* variable from the outside world leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_documented_ones():
    s = load_settings()
    assert (s.backend, s.host, s.grpc_port, s.http_port) == ("127.0.0.1:8500", "127.0.0.1", 50051, 8080)
    assert s.default_model == "fashion" and s.model_names == ["fashion"]
    assert s.allowed_formats == ["JPEG", "PNG", "WEBP"]
    assert s.model_settings("fashion").uncertain_label == "not sure"
    band = s.model_settings("fashion").thresholds.binary
    assert (band.upper, band.lower) == (0.65, 0.35)


def test_precedence_flags_over_env_over_yaml_over_defaults(tmp_path, monkeypatch):
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "grpc_port": 1111, "http_port": 2222, "max_batch_size": 7,
        "models": {"cats": {"thresholds": {"binary": {"upper": 0.8, "lower": 0.2, "positive_label": "cat"}}}},
    }))
    monkeypatch.setenv("GATEWAY_CONFIG", str(config))
    monkeypatch.setenv("GATEWAY_HTTP_PORT", "3333")
    monkeypatch.setenv("GATEWAY_GRPC_PORT", "4444")
    monkeypatch.setenv("GATEWAY_MODELS__CATS__UNCERTAIN_LABEL", "unsure")
    s = load_settings({"grpc_port": "5555"})
    assert s.grpc_port == 5555          # flag beats env and YAML
    assert s.http_port == 3333          # env beats YAML
    assert s.max_batch_size == 7        # YAML beats the default
    assert s.max_queue == 256           # default
    cats = s.model_settings("cats")      # env and YAML merge inside nested settings
    assert cats.thresholds.binary.positive_label == "cat" and cats.uncertain_label == "unsure"
    assert s.model_names == ["fashion", "cats"]


def test_list_settings_accept_comma_separated_text(monkeypatch):
    monkeypatch.setenv("GATEWAY_ALLOWED_FORMATS", "png, jpeg")
    assert load_settings().allowed_formats == ["PNG", "JPEG"]


@pytest.mark.parametrize("flags, named", [
    ({"grpc_port": "70000"}, "grpc_port"),
    ({"max_batch_size": "0"}, "max_batch_size"),
    ({"allowed_formats": "PNG,NOPE"}, "allowed_formats"),
    ({"log_level": "loud"}, "log_level"),
    ({"default_model": "../etc"}, "default_model"),
])
def test_invalid_values_name_the_setting(flags, named):
    with pytest.raises(SettingsError) as err:
        load_settings(flags)
    message = str(err.value)
    assert named in message and f"GATEWAY_{named.upper()}" in message


def test_invalid_yaml_is_reported_with_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {fashion: {thresholds: {binary: {upper: 0.2, lower: 0.9}}}}\n")
    with pytest.raises(SettingsError, match="must not exceed upper"):
        load_settings({"config": str(bad)})
    bad.write_text("grpc_port: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings({"config": str(bad)})
    bad.write_text("no_such_setting: 1\n")
    with pytest.raises(SettingsError, match="no_such_setting"):
        load_settings({"config": str(bad)})
    with pytest.raises(SettingsError, match="No such file"):
        load_settings({"config": str(tmp_path / "missing.yaml")})


def test_example_config_is_valid_and_documents_every_setting():
    s = load_settings({"config": str(EXAMPLE)})
    ignore = {"config", "decode_workers", "models"}  # decode_workers' default depends on the machine
    assert s.model_dump(exclude=ignore) == Settings().model_dump(exclude=ignore)
    assert s.models == {"fashion": ModelSettings()}   # the example spells out the defaults
    text = EXAMPLE.read_text()
    undocumented = [name for name in Settings.model_fields if name != "config" and f"{name}:" not in text]
    assert not undocumented, f"config.example.yaml lacks {undocumented}"
    fashion = yaml.safe_load(text)["models"]["fashion"]
    missing = [key for key in _keys(ModelSettings) if not _has(fashion, key.split("."))]
    assert not missing, f"config.example.yaml's models.fashion lacks {missing}"


def _keys(model, prefix: str = "") -> list[str]:
    """Every leaf key of a settings model, dotted (thresholds.ood.max_score, ...)."""
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _keys(annotation, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def _has(mapping: dict, path: list[str]) -> bool:
    for part in path:
        if not isinstance(mapping, dict) or part not in mapping:
            return False
        mapping = mapping[part]
    return True


def test_bad_settings_stop_start_up_with_a_clear_message():
    proc = subprocess.run([sys.executable, "-m", "gateway", "--grpc-port", "-1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "grpc_port" in proc.stderr and "Traceback" not in proc.stderr


def test_print_settings_shows_the_values_in_effect():
    proc = subprocess.run([sys.executable, "-m", "gateway", "--print-settings", "--max-wait-ms", "7"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "GATEWAY_MAX_QUEUE": "9"})

    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown["max_wait_ms"] == 7.0 and shown["max_queue"] == 9 and shown["backend"] == "127.0.0.1:8500"
