from __future__ import annotations

import json
import os
import subprocess
import sys

STAGES = ["ingest", "label-rewards", "snapshot", "train", "evaluate", "promote", "approve", "rollout",
          "flywheel", "fleet", "generate-offline", "experiment", "experiment-pool", "config", "keys"]


def _lwd(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_help_lists_every_stage():
    result = _lwd("--help")
    assert result.returncode == 0, result.stderr
    for stage in STAGES:
        assert stage in result.stdout, stage


def test_lwd_entry_point_installed():
    import shutil

    exe = shutil.which("lwd")
    assert exe, "the `lwd` console script is not on PATH"
    result = subprocess.run([exe, "fleet", "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "status" in result.stdout and "up" in result.stdout


def test_config_command_prints_effective_settings(tmp_path, monkeypatch):
    (tmp_path / "lwd.yaml").write_text("fleet:\n  robots: 5\n")
    result = _lwd("config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["fleet"]["robots"] == 5 and shown["storage"]["secret"] is None


def test_config_option_is_read_without_touching_the_environment(tmp_path):
    path = tmp_path / "chosen.yaml"
    path.write_text("fleet:\n  robots: 7\n")
    result = _lwd("config", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["fleet"]["robots"] == 7


def test_keys_generate_makes_private_and_public_keys(tmp_path):
    (tmp_path / "lwd.yaml").write_text(f"data_dir: {tmp_path / 'data'}\n")
    result = _lwd("keys", "generate", "--robots", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert sorted(shown["written"]) == ["release", "robot-00", "robot-01"]
    keys = tmp_path / "data" / "keys"
    assert (keys / "robots" / "robot-01.key").stat().st_mode & 0o777 == 0o600 and (keys / "release.pub").is_file()
    again = json.loads(_lwd("keys", "generate", "--robots", "2", cwd=tmp_path).stdout)
    assert again["written"] == [] and again["fingerprints"] == shown["fingerprints"]


def test_a_bad_config_is_one_readable_line_and_exit_code_2(tmp_path):
    (tmp_path / "lwd.yaml").write_text("fleet:\n  robots: -3\n  robotz: 1\n")
    result = _lwd("config", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("config error:") and "fleet.robots" in line and "fleet.robotz" in line
    missing = _lwd("config", "--config", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip().startswith("config error: FileNotFoundError")


def test_version_option():
    result = _lwd("--version")
    assert result.returncode == 0 and result.stdout.startswith("lwd-flywheel ")


def test_experiment_pool_reads_the_committed_runs_and_refuses_one_run_twice(tmp_path):
    from pathlib import Path

    results = Path(__file__).resolve().parent.parent / "docs" / "results"
    runs = [str(results / "experiment-reduced.json"), str(results / "experiment-reduced-seed1.json")]
    pooled = _lwd("experiment-pool", *runs, "--out", str(tmp_path))
    assert pooled.returncode == 0, pooled.stderr
    assert "| LWD online |" in pooled.stdout and json.loads((tmp_path / "pooled.json").read_text())["train_seeds"] == [0, 1]
    twice = _lwd("experiment-pool", runs[0], runs[0])
    assert twice.returncode == 2 and "training seeds repeat" in twice.stderr


def test_embedded_server_sends_no_telemetry_unless_asked(monkeypatch):
    # Its heartbeat met a fresh SQLite database locked by migrations and logged a traceback.
    from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED

    from flows.cli import _run
    from lwd_core.config import LWDConfig

    def analytics(config):
        return PREFECT_SERVER_ANALYTICS_ENABLED.value()

    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert _run(LWDConfig(), analytics) is False
    # An explicit choice stands (Prefect reads its environment at start: a fresh process).
    code = ("from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED as A; from flows.cli import _run; "
            "from lwd_core.config import LWDConfig; assert _run(LWDConfig(), lambda config: A.value()) is True")
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    result = subprocess.run([sys.executable, "-c", code], env=env | {"PREFECT_SERVER_ANALYTICS_ENABLED": "true"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
