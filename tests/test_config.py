"""A bad config fails at start-up with a message naming the file, the key and the fix."""
from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.config import ConfigError, load_config
from tests.conftest import ROOT

GOOD = """
model_repository: models
models:
  wine:
    versions: {1: {workers: 2}, 2: {}}
    route: {policy: shadow, champion: 1, challengers: [{version: 2, fraction: 0.1}]}
"""


def write(tmp_path, text: str):
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_the_demo_config_loads_and_paths_are_relative_to_it():
    config = load_config(ROOT / "config" / "demo.yaml")
    assert config.model_repository == ROOT / "models"
    assert config.models["wine"].route.champion == "1"
    assert config.kafka.spool.directory == ROOT / "spool"


def test_numbers_as_version_names_are_accepted(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert set(config.models["wine"].versions) == {"1", "2"}
    assert config.models["wine"].route.challengers[0].version == "2"


@pytest.mark.parametrize("text, key, hint", [
    (GOOD.replace("champion: 1", "champion: 3"), "models.wine", "route.champion '3' is not one of the deployed versions: 1, 2"),
    (GOOD.replace("fraction: 0.1", "fraction: 1.5"), "models.wine.route.challengers.0.fraction", "less than or equal to 1"),
    (GOOD.replace("workers: 2", "wokers: 2"), "models.wine.versions.1.wokers", "unknown key"),
    (GOOD + "kafka: {compression: snappy}\n", "kafka.compression", "'lz4'"),
    (GOOD + "kafka: {shipper_nice: 20}\n", "kafka.shipper_nice", "less than or equal to 19"),
    (GOOD.replace("model_repository: models\n", "") .replace("models:\n", "modles:\n"), "models", "required key is missing"),
])
def test_errors_name_file_key_and_fix(tmp_path, text, key, hint):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and key in message and hint in message, message


def test_unset_environment_variable_without_default_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_VAR_X", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_VAR_X is not set"):
        load_config(write(tmp_path, GOOD + "kafka: {bootstrap_servers: '${NO_SUCH_VAR_X}'}\n"))


def test_serve_exits_with_the_message_before_serving(tmp_path):
    path = write(tmp_path, GOOD.replace("champion: 1", "champion: 7"))
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "route.champion '7'" in result.stderr


def test_a_missing_model_version_names_the_file_to_build(tmp_path):
    path = write(tmp_path, GOOD)
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert "models.wine.versions.1" in result.stderr and "build-demo" in result.stderr
