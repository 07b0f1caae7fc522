from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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


SERVICE_SETTINGS = ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "DO_NOT_TRACK",
                    "PREFECT_SERVER_ANALYTICS_ENABLED", "MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "PREFECT_CLIENT_RETRY_EXTRA_CODES")


def _without_service_settings() -> dict[str, str]:
    """This environment as a user's shell has it: none of what `make` or the tests set for the services."""
    return {key: value for key, value in os.environ.items() if key not in (*SERVICE_SETTINGS, "PREFECT_API_URL")}


def test_lwd_applies_the_service_settings_make_applies_unless_the_user_set_them():
    code = ("import json, os, sys; from flows.cli import main; sys.argv = ['lwd', '--version']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print(json.dumps({{name: os.environ.get(name) for name in {SERVICE_SETTINGS!r}}}))")
    env = _without_service_settings() | {"PREFECT_SERVER_ANALYTICS_ENABLED": "true"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "true",  # the user's choice stands
        "MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK": "true", "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500"}


def test_the_prefect_clients_retries_reach_the_operator_as_warnings():
    import logging

    from flows.service_defaults import log_api_retries

    log_api_retries()
    log_api_retries()  # once per process, however often it is called
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append
    client, prefect_logger = logging.getLogger("prefect.client"), logging.getLogger("prefect")
    # The client's other records follow Prefect's level, which a test run earlier in this worker may have set.
    prefect_level = prefect_logger.level
    prefect_logger.setLevel(logging.INFO)
    client.addHandler(handler)
    try:
        client.debug("Received response with retryable status code 500. Another attempt will be made in 2s.")
        client.debug("request headers: ...")  # the client's other debug records stay quiet
        client.info("a plain info record")
    finally:
        client.removeHandler(handler)
        prefect_logger.setLevel(prefect_level)
    assert [(r.levelname, r.getMessage()[:60]) for r in seen] == [
        ("WARNING", "the Prefect API is failing, retrying: Received response with"), ("INFO", "a plain info record")]


def test_lwd_starts_its_embedded_prefect_server_on_a_busy_machine(tmp_path):
    """Every core busy, no settings from `make`: `lwd ingest` still starts the ephemeral Prefect API and
    runs its flow (Prefect's own 20 s start-up limit failed here on a loaded machine)."""
    import shutil

    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        env = _without_service_settings() | {"LWD_DATA_DIR": str(tmp_path / "data"),
                                             "PREFECT_HOME": str(tmp_path / "prefect")}
        result = subprocess.run([shutil.which("lwd") or str(Path(sys.executable).parent / "lwd"), "ingest",
                                 "--config", str(ROOT / "configs" / "tiny.yaml")],
                                env=env, capture_output=True, text=True, timeout=1200)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Timed out while attempting to connect" not in result.stderr
    assert json.loads(result.stdout)["seen"] == 0  # an empty store: the flow ran to its report
    assert "Finished in state Completed" in result.stderr
