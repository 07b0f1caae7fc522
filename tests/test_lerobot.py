"""LeRobotDataset v3 interop. The fixture was written by the lerobot package itself
(tests/fixtures/lerobot/make_fixture.py); our export is opened by LeRobot's `LeRobotDataset` in the
interop test (`pytest tests/test_lerobot.py --lerobot-python PATH`, recorded in docs/results)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import last_json, lwd

from lwd_core.config import AlgoConfig, LeRobotConfig
from lwd_core.data.labels import label_buffer
from lwd_core.data.layout import buffer_prefix, get_episode
from lwd_core.data.lerobot import (
    _write_tasks,
    export_snapshot,
    import_dataset,
    read_dataset,
)
from lwd_core.data.nstep import NStepSchedule
from lwd_core.data.snapshot import build_snapshot
from lwd_core.suite import OBS_DIM, SCENE_OBS_DIMS, get_task

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "lerobot" / "cube-single-demos"
DATA = "data/chunk-000/file-000.parquet"


def buffered(store) -> list:
    return sorted((get_episode(store, key) for key in store.list(buffer_prefix("offline"), ".parquet")),
                  key=lambda episode: episode.timestamps_us[0])


def test_a_dataset_lerobot_wrote_imports_once_with_its_steps_actions_and_outcomes(local_store):
    report = import_dataset(local_store, FIXTURE, LeRobotConfig())
    assert [o.status for o in report.outcomes] == ["accepted"] * 3, [o.reasons for o in report.outcomes]
    episodes = buffered(local_store)
    frames = pl.read_parquet(FIXTURE / DATA)
    task = get_task("restock-horizontal")
    for index, episode in enumerate(episodes):
        rows = frames.filter(pl.col("episode_index") == index)
        assert episode.num_steps == len(rows) and episode.task_id == task.task_id
        assert episode.instruction == task.instruction and episode.source == "demo"
        np.testing.assert_array_equal(episode.actions, np.stack(rows["action"].to_numpy()))
        np.testing.assert_array_equal(episode.observations[:, :SCENE_OBS_DIMS[task.scene]],
                                      np.stack(rows["observation.state"].to_numpy()))
        assert episode.outcome == ("success" if rows["next.success"][-1] else "failure")
        np.testing.assert_array_equal(episode.rewards, np.where(rows["next.success"].to_numpy(), 0.0, -1.0))
    assert [e.outcome for e in episodes] == ["success", "success", "failure"]
    again = import_dataset(local_store, FIXTURE, LeRobotConfig())
    assert [o.status for o in again.outcomes] == ["duplicate"] * 3
    assert len(buffered(local_store)) == 3 and local_store.list("import") == []


def test_a_bad_episode_is_quarantined_with_its_reason_and_the_others_land(local_store, tmp_path):
    dataset = tmp_path / "lab"
    shutil.copytree(FIXTURE, dataset)
    frames = pq.read_table(dataset / DATA).to_pandas()
    first_of = {index: frames.index[frames.episode_index == index][0] for index in range(3)}
    frames.at[first_of[1] + 3, "observation.state"] = np.full(28, np.nan, np.float32)  # a sensor glitch
    frames.loc[frames.episode_index == 2, "task_index"] = 1  # a task the suite does not have
    pq.write_table(pq.read_table(dataset / DATA).from_pandas(frames, schema=pq.read_schema(dataset / DATA)),
                   dataset / DATA)
    _write_tasks(dataset / "meta" / "tasks.parquet", [get_task("restock-horizontal").instruction, "juggle knives"])

    report = import_dataset(local_store, dataset, LeRobotConfig())
    status = {o.raw_key.rsplit("/", 1)[1]: (o.status, " ".join(o.reasons)) for o in report.outcomes}
    assert status["episode-000000.parquet"] == ("accepted", "")
    assert status["episode-000001.parquet"][0] == "quarantined" and "NaN or inf" in status["episode-000001.parquet"][1]
    assert status["episode-000002.parquet"] == (
        "quarantined", "not importable: task 'juggle knives' is no suite task's instruction; map it in lerobot.tasks")
    assert len(buffered(local_store)) == 1 and len(local_store.list("quarantine", ".parquet")) == 2


def test_a_dataset_with_its_own_feature_names_imports_through_the_mapping(local_store, tmp_path):
    dataset = tmp_path / "lab"
    shutil.copytree(FIXTURE, dataset)
    renames = {"observation.state": "observation.scene", "action": "action.ee_delta", "next.success": "next.is_success"}
    pq.write_table(pq.read_table(dataset / DATA).rename_columns(
        [renames.get(name, name) for name in pq.read_schema(dataset / DATA).names]), dataset / DATA)
    info = json.loads((dataset / "meta" / "info.json").read_text())
    info["features"] = {renames.get(name, name): feature for name, feature in info["features"].items()}
    (dataset / "meta" / "info.json").write_text(json.dumps(info))

    unmapped = import_dataset(local_store, dataset, LeRobotConfig())
    assert {o.status for o in unmapped.outcomes} == {"quarantined"}
    assert "no feature 'observation.state' for the state (set lerobot.state" in unmapped.outcomes[0].reasons[0]
    mapped = LeRobotConfig(state="observation.scene", action="action.ee_delta", success="next.is_success",
                           tasks={get_task("restock-horizontal").instruction: "restock-horizontal"})
    assert [o.status for o in import_dataset(local_store, dataset, mapped).outcomes] == ["accepted"] * 3


def _exported(store, tmp_path) -> Path:
    import_dataset(store, FIXTURE, LeRobotConfig())
    algo = AlgoConfig()
    label_buffer(store, "offline", algo.discount, NStepSchedule.from_config(algo))
    out = tmp_path / "export"
    assert export_snapshot(store, build_snapshot(store), out) == {"episodes": 3, "frames": 167, "tasks": 1}
    return out


def test_export_then_import_keeps_steps_actions_instruction_and_outcome(local_store, tmp_path):
    from lwd_core.store import ObjectStore

    out = _exported(local_store, tmp_path)
    info, episodes = read_dataset(out)
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == 167 and len(list(episodes)) == 3
    elsewhere = ObjectStore((tmp_path / "elsewhere").as_uri())
    assert [o.status for o in import_dataset(elsewhere, out, LeRobotConfig()).outcomes] == ["accepted"] * 3
    def by_content(episodes):  # the export orders episodes as the snapshot does
        return sorted(episodes, key=lambda episode: episode.actions.tobytes())

    for before, after in zip(by_content(buffered(local_store)), by_content(buffered(elsewhere)), strict=True):
        assert (after.num_steps, after.instruction, after.outcome) == (before.num_steps, before.instruction,
                                                                       before.outcome)
        np.testing.assert_array_equal(after.actions, before.actions)
        np.testing.assert_array_equal(after.observations, before.observations)


def test_lwd_import_lerobot_from_the_command_line(tmp_path):
    import os

    env = {**os.environ, "LWD_CONFIG": str(ROOT / "configs" / "tiny.yaml"), "LWD_DATA_DIR": str(tmp_path / "data"),
           "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    result = lwd(env, "import", "lerobot", str(FIXTURE))
    assert result.returncode == 0, result.stderr[-2000:]
    assert last_json(result.stdout) | {"dataset": ""} == {"dataset": "", "accepted": 3, "duplicates": 0,
                                                          "quarantined": 0, "quarantine_reasons": {}}


OPEN_WITH_LEROBOT = """
import json, sys
from lerobot.datasets.lerobot_dataset import LeRobotDataset
dataset = LeRobotDataset("lwd/export", root=sys.argv[1])
frames = [dataset[index] for index in range(len(dataset))]
print(json.dumps({"lerobot": __import__("lerobot").__version__, "episodes": dataset.num_episodes,
                  "frames": len(frames), "fps": dataset.fps, "tasks": sorted({f["task"] for f in frames}),
                  "state_shape": list(frames[0]["observation.state"].shape),
                  "successes": int(sum(bool(f["next.success"]) for f in frames)),
                  "interventions": int(sum(bool(f["intervention"]) for f in frames))}))
"""


def test_our_export_opens_in_lerobot(local_store, tmp_path, request):
    python = request.config.getoption("--lerobot-python")
    if not python:
        pytest.skip("interop run: pass --lerobot-python PATH (a Python with lerobot; it pulls torch, so it "
                    "lives outside this project's environment)")
    out = _exported(local_store, tmp_path)
    opened = subprocess.run([python, "-c", OPEN_WITH_LEROBOT, str(out)], capture_output=True, text=True, timeout=900,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert opened.returncode == 0, opened.stderr[-3000:]
    seen = json.loads(opened.stdout.splitlines()[-1])
    assert (seen["episodes"], seen["frames"], seen["fps"], seen["successes"]) == (3, 167, 20, 2)
    assert seen["tasks"] == [get_task("restock-horizontal").instruction] and seen["state_shape"] == [OBS_DIM]
    print(json.dumps(seen))
