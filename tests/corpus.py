"""Bad-input corpus: every way an uploaded episode can be wrong, with the reason ingestion must give."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import make_episode

from lwd_core.data.episode import LAYOUT_KEY, Episode, footer_key
from lwd_core.suite import ACTION_DIM, MAX_SCENE_OBS, OBS_DIM, SCENES, TELEOP_POLICY_VERSION, sparse_rewards

ROBOT, TASK, VERSION = "robot-00", "restock-horizontal", "policy-v1"
TELEOPERATOR = "operator-1"


def fleet_episode(seed: int = 0, steps: int = 20, **overrides) -> Episode:
    fields = dict(steps=steps, obs_dim=OBS_DIM, action_dim=ACTION_DIM, robot_id=ROBOT, task_id=TASK, seed=seed,
                  policy_version=VERSION)
    fields.update(overrides)
    return make_episode(**fields)


@dataclass
class BadCase:
    name: str
    data: bytes
    reason: str  # substring the quarantine reason must contain


def frame_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def with_footer(episode: Episode, change) -> bytes:
    """A file of ``episode`` whose footer metadata ``change`` rewrote (a hostile uploader's)."""
    table = pq.read_table(io.BytesIO(episode.to_parquet_bytes()))
    metadata = {key.decode(): value.decode() for key, value in table.schema.metadata.items() if key != b"ARROW:schema"}
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(change(metadata)), sink)
    return sink.getvalue().to_pybytes()


def layout_2_file(table: pa.Table, episode: Episode, **options) -> bytes:
    """``table`` written as Parquet under ``episode``'s layout-2 footer (a crafted upload's columns)."""
    footer = {LAYOUT_KEY: "2", **{footer_key(name): value for name, value in episode.strings().items()}}
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(footer), sink, **options)
    return sink.getvalue().to_pybytes()


def with_string_columns(episode: Episode) -> bytes:
    """A layout-2 footer over every column, the per-episode strings repeated in columns too."""
    return layout_2_file(episode.to_arrow(), episode)


def bad_corpus(max_steps: int) -> list[BadCase]:
    good = fleet_episode(seed=100)
    cases = []
    cases.append(BadCase("truncated", good.to_parquet_bytes()[: len(good.to_parquet_bytes()) // 2], "malformed"))
    cases.append(BadCase("wrong-schema", frame_bytes(good.to_frame().drop("intervention")), "missing columns"))
    cases.append(BadCase("wrong-type", frame_bytes(good.to_frame().with_columns(pl.col("reward").cast(pl.Float64))),
                         "wrong column types"))
    obs = good.observations.copy()
    obs[3, 2] = np.nan
    cases.append(BadCase("nan-observation", good.replace(observations=obs).to_parquet_bytes(), "NaN or inf"))
    actions = good.actions.copy()
    actions[5, 0] = np.inf
    cases.append(BadCase("inf-action", good.replace(actions=actions).to_parquet_bytes(), "NaN or inf"))
    cases.append(BadCase("action-dim", fleet_episode(seed=101, action_dim=ACTION_DIM - 1).to_parquet_bytes(),
                         f"action dim is not {ACTION_DIM}"))
    cases.append(BadCase("observation-dim", fleet_episode(seed=102, obs_dim=OBS_DIM + 3).to_parquet_bytes(),
                         f"observation dim is not {OBS_DIM}"))
    actions = good.actions.copy()
    actions[2, 1] = 1.5
    cases.append(BadCase("action-bounds", good.replace(actions=actions).to_parquet_bytes(), "action outside"))
    stamps = good.timestamps_us.copy()
    stamps[7] = stamps[6]
    cases.append(BadCase("timestamps", good.replace(timestamps_us=stamps).to_parquet_bytes(),
                         "timestamps not strictly increasing"))
    cases.append(BadCase("unknown-task", fleet_episode(seed=103, task_id="juggle-knives").to_parquet_bytes(),
                         "unknown task"))
    cases.append(BadCase("unknown-robot", fleet_episode(seed=104, robot_id="robot-99").to_parquet_bytes(),
                         "unknown robot"))
    cases.append(BadCase("unknown-version", fleet_episode(seed=105, policy_version="policy-v999").to_parquet_bytes(),
                         "unknown policy version"))
    rewards = good.rewards.copy()
    rewards[0] = 5.0
    cases.append(BadCase("reward-mismatch", good.replace(rewards=rewards).to_parquet_bytes(), "reward disagrees"))
    altered = good.to_frame().with_columns(pl.col("reward") * 0 - 1)  # content changed, id kept
    cases.append(BadCase("id-mismatch", frame_bytes(altered), "does not match its content"))
    cases.append(BadCase("too-long", fleet_episode(seed=106, steps=max_steps + 1).to_parquet_bytes(),
                         "too many rows"))
    # Bounds read from the footer, before decoding: cheap to send, expensive to decode.
    cases.append(BadCase("two-million-rows", frame_bytes(pl.DataFrame({"step": pl.zeros(2_000_000, pl.Int32, eager=True)})),
                         "too many rows"))
    cases.append(BadCase("megabyte-instruction",
                         frame_bytes(good.to_frame().with_columns(pl.lit("x" * 4_000_000).alias("instruction"))),
                         "bytes uncompressed"))
    # Finite and well-formed, but absurd.
    obs = good.observations.copy()
    obs[4, 1] = 1e30
    cases.append(BadCase("huge-observation", good.replace(observations=obs).to_parquet_bytes(), "outside the suite's bounds"))
    obs = good.observations.copy()
    obs[2, OBS_DIM - 10] = 0.5  # a padding slot of a cube-single observation
    cases.append(BadCase("padding-not-zero", good.replace(observations=obs).to_parquet_bytes(), "padding or scene id"))
    obs = good.next_observations.copy()
    obs[-1, MAX_SCENE_OBS - 1] = -1e-6  # the last padding slot, barely off zero
    cases.append(BadCase("next-padding-not-zero", good.replace(next_observations=obs).to_parquet_bytes(),
                         "padding or scene id"))
    obs = good.observations.copy()
    obs[:, MAX_SCENE_OBS:] = np.eye(len(SCENES))[SCENES.index("cube-triple")]  # a cube-single task's steps
    cases.append(BadCase("wrong-scene-one-hot", good.replace(observations=obs).to_parquet_bytes(), "padding or scene id"))
    cases.append(BadCase("centuries-ahead", good.replace(timestamps_us=good.timestamps_us + 300 * 365 * 86400 * 10**6)
                         .to_parquet_bytes(), "timestamps outside"))
    terminals = good.terminals.copy()
    terminals[3] = True
    cases.append(BadCase("terminal-mid-episode", good.replace(terminals=terminals).to_parquet_bytes(),
                         "terminal step before the end"))
    failed = fleet_episode(seed=113, success=False)
    terminals = failed.terminals.copy()
    terminals[-1] = True  # the suite's simulator terminates only at the goal
    cases.append(BadCase("terminal-failure", failed.replace(terminals=terminals).to_parquet_bytes(),
                         "terminal and success flags disagree"))
    # Claims checked both ways: a success (reward 0, by the suite's rule) on a step that did not end the
    # episode is a reward the robot did not earn.
    successes = good.successes.copy()
    successes[5] = True
    cases.append(BadCase("success-mid-episode", good.replace(successes=successes, rewards=sparse_rewards(successes))
                         .to_parquet_bytes(), "terminal and success flags disagree"))
    successes = failed.successes.copy()
    successes[-1] = True  # a failed episode relabelled a success, rewards and outcome to match, never terminated
    cases.append(BadCase("success-without-terminal", failed.replace(
        successes=successes, rewards=sparse_rewards(successes), outcome="success").to_parquet_bytes(),
        "terminal and success flags disagree"))
    demo = fleet_episode(seed=114, robot_id=TELEOPERATOR, source="demo", policy_version=TELEOP_POLICY_VERSION)
    cases.append(BadCase("demo-with-interventions", demo.replace(
        interventions=np.arange(demo.num_steps) % 4 == 1, chunk_pos=np.zeros(demo.num_steps, np.int32)).to_parquet_bytes(),
        "intervention steps in a demonstration or play episode"))
    interventions = good.interventions.copy()
    interventions[np.flatnonzero(good.chunk_pos == 2)[0]] = True  # the policy's own step passed off as a person's
    cases.append(BadCase("intervention-mid-chunk", good.replace(interventions=interventions).to_parquet_bytes(),
                         "intervention step inside a policy's action chunk"))
    cases.append(BadCase("outcome-contradicts-flags", good.replace(outcome="failure").to_parquet_bytes(),
                         "outcome disagrees"))
    cases.append(BadCase("robot-claims-demo", fleet_episode(seed=107, source="demo").to_parquet_bytes(),
                         "source not allowed"))
    cases.append(BadCase("wrong-instruction", fleet_episode(seed=108, instruction="open the vault").to_parquet_bytes(),
                         "instruction is not the task's"))
    # Broken files and frames.
    cases.append(BadCase("empty-file", b"", "malformed"))
    cases.append(BadCase("random-bytes", np.random.default_rng(0).bytes(4096), "malformed"))
    cases.append(BadCase("no-steps", frame_bytes(good.to_frame().head(0)), "no rows"))
    cases.append(BadCase("extra-column", frame_bytes(good.to_frame().with_columns(pl.lit(1).alias("payload"))), "too many columns"))
    cases.append(BadCase("null-reward", frame_bytes(good.to_frame().with_columns(
        pl.when(pl.col("step") == 2).then(None).otherwise(pl.col("reward")).alias("reward"))), "has nulls"))
    ragged = good.to_frame().with_columns(pl.when(pl.col("step") == 1).then(pl.col("obs").list.slice(0, 10))
                                          .otherwise(pl.col("obs")).alias("obs"))
    cases.append(BadCase("ragged-observations", frame_bytes(ragged), "different lengths"))
    cases.append(BadCase("next-observation-dim", frame_bytes(good.to_frame().with_columns(
        pl.col("next_obs").list.slice(0, OBS_DIM - 2))), "next_observations must have the shape"))
    cases.append(BadCase("negative-timestamps", good.replace(timestamps_us=good.timestamps_us - good.timestamps_us[0] - 10**9)
                         .to_parquet_bytes(), "timestamps outside"))
    cases.append(BadCase("unknown-source", frame_bytes(fleet_episode(seed=109).to_frame().with_columns(
        pl.lit("teleport").alias("source"))), "unknown source"))
    cases.append(BadCase("unknown-outcome", frame_bytes(good.to_frame().with_columns(pl.lit("maybe").alias("outcome"))),
                         "unknown outcome"))
    cases.append(BadCase("robot-path-traversal", fleet_episode(seed=110, robot_id="../robot-00").to_parquet_bytes(), "unknown robot"))
    mixed_ids = good.to_frame().with_columns(pl.when(pl.col("step") == 0).then(pl.lit("robot-01"))
                                             .otherwise(pl.col("robot_id")).alias("robot_id"))
    cases.append(BadCase("robot-changes-mid-episode", frame_bytes(mixed_ids), "one value for the whole episode"))
    cases.append(BadCase("repeated-step-index", frame_bytes(good.to_frame().with_columns(
        pl.when(pl.col("step") == 1).then(0).otherwise(pl.col("step")).cast(pl.Int32).alias("step"))), "no gaps or repeats"))
    rewards = good.rewards.copy()
    rewards[1] = np.inf
    cases.append(BadCase("inf-reward", good.replace(rewards=rewards).to_parquet_bytes(), "NaN or inf"))
    cases.append(BadCase("homoglyph-instruction", fleet_episode(seed=111, instruction=good.instruction.replace("e", "\u0435"))
                         .to_parquet_bytes(), "instruction is not the task's"))
    obs = good.next_observations.copy()
    obs[-1, 0] = -np.inf
    cases.append(BadCase("inf-next-observation", good.replace(next_observations=obs).to_parquet_bytes(), "NaN or inf"))
    # The per-episode strings a file keeps in its footer.
    cases.append(BadCase("footer-without-task", with_footer(good, lambda m: {k: v for k, v in m.items() if k != "lwd.task_id"}),
                         "footer metadata missing"))
    cases.append(BadCase("footer-megabyte-instruction", with_footer(good, lambda m: m | {"lwd.instruction": "x" * 4_000_000}),
                         "footer values over"))
    cases.append(BadCase("footer-robot-changed", with_footer(good, lambda m: m | {"lwd.robot_id": "robot-01"}),
                         "does not match its content"))
    cases.append(BadCase("strings-in-footer-and-columns", with_string_columns(fleet_episode(seed=112)), "unexpected columns"))
    return cases
