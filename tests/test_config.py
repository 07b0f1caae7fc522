from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from lwd_core.config import LWDConfig, load_config


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for var in ("LWD_CONFIG", "LWD_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)


def test_embedded_defaults_live_under_the_data_dir(tmp_path):
    config = load_config()
    assert config.data_dir == (tmp_path / ".lwd").resolve()
    assert config.storage.url == (tmp_path / ".lwd" / "store").as_uri()
    assert config.tracking.mlflow_uri == f"sqlite:///{tmp_path / '.lwd' / 'mlflow.db'}"
    assert config.orchestration.prefect_api_url == ""
    assert config.algo.agents == {}  # every agent on its own defaults


def test_yaml_then_env_then_kwargs(tmp_path, monkeypatch):
    (tmp_path / "lwd.yaml").write_text(
        "fleet:\n  robots: 16\n  tasks: [cube-single-task1]\nalgo:\n  discount: 0.95\n  agents:\n    lwd: {qam_beta: 3.0}\n"
        "storage:\n  url: s3://bucket/prefix\n  endpoint_url: http://127.0.0.1:9000\n"
    )
    config = load_config()
    assert config.fleet.robots == 16 and config.algo.discount == 0.95 and config.algo.agents["lwd"]["qam_beta"] == 3.0
    assert config.storage.url == "s3://bucket/prefix" and config.fleet.tasks == ["cube-single-task1"]
    monkeypatch.setenv("LWD_ALGO__DISCOUNT", "0.9")
    monkeypatch.setenv("LWD_FLEET__ROBOTS", "8")
    config = load_config()
    assert config.algo.discount == 0.9 and config.fleet.robots == 8 and config.algo.agents["lwd"]["qam_beta"] == 3.0
    assert load_config(fleet={"robots": 2}).fleet.robots == 2


def test_explicit_config_file(tmp_path, monkeypatch):
    path = tmp_path / "elsewhere.yaml"
    path.write_text("tracking:\n  experiment: other\n")
    monkeypatch.setenv("LWD_CONFIG", str(path))
    assert load_config().tracking.experiment == "other"
    monkeypatch.setenv("LWD_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match="does not name a file"):
        load_config()


@pytest.mark.parametrize(
    "overrides",
    [
        {"fleet": {"robots": 0}},
        {"algo": {"discount": 1.5}},
        {"algo": {"qam_beta": 3.0}},  # an agent's setting goes under algo.agents.<method>
        {"storage": {"url": "ftp://host/x"}},
        {"fleet": {"robotz": 3}},
    ],
)
def test_invalid_settings_fail_clearly(overrides):
    with pytest.raises(ValidationError):
        LWDConfig(**overrides)


def test_secrets_masked_in_public_dict():
    config = load_config(storage={"url": "s3://b/p", "key": "AKIA", "secret": "shh"})
    public = config.public_dict()
    assert public["storage"]["secret"] == "***" and public["storage"]["key"] == "***"
    assert config.storage.secret.get_secret_value() == "shh"
    assert "shh" not in repr(config) and "shh" not in config.model_dump_json()


def test_config_file_argument_and_private_json_round_trip(tmp_path, monkeypatch):
    monkeypatch.delenv("LWD_CONFIG", raising=False)
    path = tmp_path / "chosen.yaml"
    path.write_text("fleet:\n  robots: 9\nstorage:\n  secret: from-file\n")
    config = load_config(path)
    assert config.fleet.robots == 9
    assert load_config().fleet.robots != 9, "the file applies to that one load only"
    child = LWDConfig.from_private_json(config.private_json())
    assert child == config and child.storage.secret.get_secret_value() == "from-file"
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_data_dir_env_moves_the_stack(tmp_path, monkeypatch):
    monkeypatch.setenv("LWD_DATA_DIR", str(tmp_path / "elsewhere"))
    config = load_config()
    assert Path(config.storage.url.removeprefix("file://")) == tmp_path / "elsewhere" / "store"


@pytest.mark.parametrize("settings", [{"tau_min": 0.9, "tau_max": 0.6}, {"value_model": "mystery"},
                                      {"qam_temperature": 1.0}])
def test_invalid_agent_settings_fail_clearly(settings):
    from lwd_core.algo.agents import agent_config

    with pytest.raises(ValueError, match=r"^algo\.agents\.lwd: "):
        agent_config("lwd", settings)
