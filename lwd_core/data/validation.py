"""Episode validation: a Great Expectations suite over per-step check columns, plus the checks GX
cannot express (parsing, schema, content hash). Every failure has a reason a human can act on.

Speed: the same suite is first evaluated as one vectorised polars pass (:func:`passes_precheck`); a
clean micro-batch stops there, and a batch with any failure runs GX, which names the failing episodes.

Why derived columns: GX checks scalar columns, and an episode's vectors (obs, action) are lists. So each
step becomes a row of scalars (vector lengths, finiteness, largest |action|, time since the previous
step, episode length), and a batch of episodes is validated in one GX run; ``unexpected_index_list``
names the failing episodes by id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import polars as pl

from lwd_core.data.episode import OUTCOMES, SOURCES, Episode
from lwd_core.store import now_us
from lwd_core.suite import (
    ACTION_DIM,
    OBS_DIM,
    SCENE_OBS_DIMS,
    TASKS_BY_ID,
    TELEOP_POLICY_VERSION,
    TaskSpec,
    observation_bounds,
    pad_observation,
    sparse_rewards,
)

SUITE_NAME = "lwd-episode"
# Actions are clipped to [-1, 1] by the actor; a little slack for float round-off.
ACTION_BOUND = 1.0 + 1e-5


@dataclass(frozen=True)
class Expectations:
    """What a valid fleet episode looks like here (from the suite, the fleet and the coordinator)."""

    obs_dim: int
    action_dim: int
    tasks: frozenset[str]
    robots: frozenset[str]
    policy_versions: frozenset[str]
    max_steps: int
    sources: frozenset[str] = frozenset(SOURCES)
    # Robots upload their own rollouts; demonstrations and play come only from these identities
    # (config fleet.teleoperators), which upload nothing else.
    teleoperators: frozenset[str] = frozenset()
    # Timestamps must fall in [ingest time - max_age, ingest time + max_skew].
    max_age_s: float = 7 * 24 * 3600.0
    max_skew_s: float = 300.0

    @classmethod
    def for_suite(cls, suite: Iterable[TaskSpec], robots: Iterable[str], policy_versions: Iterable[str],
                  teleoperators: Iterable[str] = ()) -> Expectations:
        suite = list(suite)
        return cls(obs_dim=OBS_DIM, action_dim=ACTION_DIM, tasks=frozenset(t.task_id for t in suite),
                   robots=frozenset(robots), policy_versions=frozenset(policy_versions),
                   max_steps=max(t.horizon for t in suite), teleoperators=frozenset(teleoperators))


@dataclass
class ValidationReport:
    """Per episode id: the failed checks (empty: valid)."""

    failures: dict[str, list[str]] = field(default_factory=dict)

    def reasons(self, episode_id: str) -> list[str]:
        return self.failures.get(episode_id, [])


@lru_cache(maxsize=len(TASKS_BY_ID))
def _fixed_layout(task: TaskSpec) -> tuple[int, np.ndarray]:
    """Where a task's observation stops being scene state, and the exact values from there on: zero
    padding and the task's own one-hot scene id (derived from pad_observation, the layout's one home)."""
    state_dims = SCENE_OBS_DIMS[task.scene]
    return state_dims, pad_observation(np.zeros(state_dims), task)[state_dims:]


@lru_cache(maxsize=len(TASKS_BY_ID) + 1)
def _bounds(task: TaskSpec | None) -> np.ndarray:
    return observation_bounds(task) if task is not None else np.full(OBS_DIM, np.inf, np.float32)


def _layout_matches(episode: Episode, task: TaskSpec | None) -> bool:
    """Padding and scene id of every (next) observation are exactly the task's; a wrong shape is the
    dimension checks' to report."""
    if task is None or not episode.observations.shape[1:] == episode.next_observations.shape[1:] == (OBS_DIM,):
        return True
    start, fixed = _fixed_layout(task)
    return bool((episode.observations[:, start:] == fixed).all() and (episode.next_observations[:, start:] == fixed).all())


def _semantics(episode: Episode, exp: Expectations) -> dict[str, bool]:
    """Per-episode facts that are finite and well-formed yet absurd (those over the per-step columns,
    the timestamps' window and an early terminal, :func:`check_frame` reduces per episode)."""
    task = TASKS_BY_ID.get(episode.task_id)
    bounds = _bounds(task)
    in_bounds = True
    if episode.observations.shape[1:] == bounds.shape == episode.next_observations.shape[1:]:
        # NaN compares False: out of bounds, like inf.
        in_bounds = bool((np.abs(episode.observations) <= bounds).all()
                         and (np.abs(episode.next_observations) <= bounds).all())
    last_success = bool(episode.successes[-1]) if episode.num_steps else False
    return {
        "obs_in_bounds": in_bounds,
        "obs_layout_matches_task": _layout_matches(episode, task),
        "outcome_matches_success": episode.outcome == ("success" if last_success else "failure"),
        "instruction_matches_task": task is None or episode.instruction == task.instruction,
        "source_allowed": episode.robot_id in (exp.robots if episode.source == "rollout" else exp.teleoperators),
        # A human's episode names no release, and a rollout must not pass for a human's.
        "version_matches_source": (episode.policy_version == TELEOP_POLICY_VERSION) == (episode.source != "rollout"),
        # An intervention is a person taking over a robot's rollout; a demonstration or play is all human.
        "interventions_match_source": episode.source == "rollout" or not episode.interventions.any(),
        # The person decides every step of a takeover: each of their actions starts a chunk of its own.
        "interventions_act_step_by_step": not (episode.interventions & (episode.chunk_pos != 0)).any(),
    }


def check_frame(episodes: Iterable[Episode], exp: Expectations) -> pl.DataFrame:
    """One row per step with the scalar columns the suite checks, built in one pass: vectors reduce
    per episode to a value per step (their widths may differ), the per-step columns are computed over
    the batch's concatenated arrays, and per-episode values are gathered to their rows."""
    episodes = list(episodes)
    if not episodes:
        return pl.DataFrame()
    now = now_us()
    steps = np.array([episode.num_steps for episode in episodes])
    starts = np.cumsum(steps) - steps
    per_episode = {name: [getattr(episode, name) for episode in episodes]
                   for name in ("episode_id", "robot_id", "task_id", "policy_version", "source", "outcome")}
    dims = {"obs_dim": [episode.observations.shape[1] for episode in episodes],
            "next_obs_dim": [episode.next_observations.shape[1] for episode in episodes],
            "action_dim": [episode.actions.shape[1] for episode in episodes]}
    semantics: dict[str, list[bool]] = {}
    for episode in episodes:
        for name, value in _semantics(episode, exp).items():
            semantics.setdefault(name, []).append(value)

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(episode, name) for episode in episodes])

    rewards, successes, terminals, stamps = (joined(name) for name in ("rewards", "successes", "terminals",
                                                                       "timestamps_us"))
    finite = np.concatenate([np.isfinite(e.observations).all(1) & np.isfinite(e.actions).all(1)
                             & np.isfinite(e.next_observations).all(1) for e in episodes]) & np.isfinite(rewards)
    action_abs_max = np.concatenate([np.abs(e.actions).max(1) for e in episodes])  # NaN propagates
    timestamp_delta = np.diff(stamps, prepend=stamps[0] - 1)
    timestamp_delta[starts] = 1  # an episode's first step follows nothing
    semantics["timestamps_in_window"] = list((np.minimum.reduceat(stamps, starts) >= now - exp.max_age_s * 1e6)
                                             & (np.maximum.reduceat(stamps, starts) <= now + exp.max_skew_s * 1e6))
    early_terminals = terminals.copy()
    early_terminals[starts + steps - 1] = False
    semantics["terminal_only_last"] = list(~np.logical_or.reduceat(early_terminals, starts))

    gather = pl.Series(np.repeat(np.arange(len(episodes)), steps))
    columns = {name: pl.Series(values, dtype=pl.String).gather(gather) for name, values in per_episode.items()}
    columns |= {name: np.repeat(np.asarray(values, np.int64), steps) for name, values in dims.items()}
    columns |= {
        "finite": finite,
        "action_abs_max": np.nan_to_num(action_abs_max, nan=np.inf, posinf=np.inf),
        "timestamp_delta_us": timestamp_delta.astype(np.int64),
        "reward_matches_success": rewards == sparse_rewards(successes),
        # The suite's simulator terminates exactly at the goal: success and termination are one flag,
        # so a success claimed on a step that did not end the episode (a reward it did not earn) fails.
        "terminal_matches_success": terminals == successes,
        "episode_steps": np.repeat(steps.astype(np.int64), steps),
    }
    columns |= {name: np.repeat(np.asarray(values, bool), steps) for name, values in semantics.items()}
    return pl.DataFrame(columns)


# (expectation, column, kwargs, human reason)
def _suite_spec(exp: Expectations) -> list[tuple[str, str, dict, str]]:
    return [
        ("ExpectColumnValuesToBeInSet", "task_id", {"value_set": sorted(exp.tasks)}, "unknown task"),
        ("ExpectColumnValuesToBeInSet", "robot_id", {"value_set": sorted(exp.robots | exp.teleoperators)},
         "unknown robot"),
        ("ExpectColumnValuesToBeInSet", "policy_version",
         {"value_set": sorted(exp.policy_versions | ({TELEOP_POLICY_VERSION} if exp.teleoperators else set()))},
         "unknown policy version"),
        ("ExpectColumnValuesToBeInSet", "source", {"value_set": sorted(exp.sources)}, "unexpected source"),
        ("ExpectColumnValuesToBeInSet", "outcome", {"value_set": list(OUTCOMES)}, "unknown outcome"),
        ("ExpectColumnValuesToBeBetween", "obs_dim", {"min_value": exp.obs_dim, "max_value": exp.obs_dim},
         f"observation dim is not {exp.obs_dim}"),
        ("ExpectColumnValuesToBeBetween", "next_obs_dim", {"min_value": exp.obs_dim, "max_value": exp.obs_dim},
         f"next observation dim is not {exp.obs_dim}"),
        ("ExpectColumnValuesToBeBetween", "action_dim", {"min_value": exp.action_dim, "max_value": exp.action_dim},
         f"action dim is not {exp.action_dim}"),
        ("ExpectColumnValuesToBeInSet", "finite", {"value_set": [True]}, "NaN or inf in observations/actions/rewards"),
        ("ExpectColumnValuesToBeBetween", "action_abs_max", {"min_value": 0.0, "max_value": ACTION_BOUND},
         "action outside [-1, 1]"),
        ("ExpectColumnValuesToBeBetween", "timestamp_delta_us", {"min_value": 1},
         "timestamps not strictly increasing"),
        ("ExpectColumnValuesToBeBetween", "episode_steps", {"min_value": 1, "max_value": exp.max_steps},
         f"episode longer than {exp.max_steps} steps"),
        ("ExpectColumnValuesToBeInSet", "reward_matches_success", {"value_set": [True]},
         "reward disagrees with the success flag (sparse 0/-1)"),
        ("ExpectColumnValuesToBeInSet", "obs_in_bounds", {"value_set": [True]},
         "observation outside the suite's bounds for its task"),
        ("ExpectColumnValuesToBeInSet", "obs_layout_matches_task", {"value_set": [True]},
         "observation padding or scene id is not the task's (padding must be 0, the scene one-hot its own)"),
        ("ExpectColumnValuesToBeInSet", "timestamps_in_window", {"value_set": [True]},
         f"timestamps outside [now - {exp.max_age_s:.0f}s, now + {exp.max_skew_s:.0f}s]"),
        ("ExpectColumnValuesToBeInSet", "terminal_only_last", {"value_set": [True]},
         "terminal step before the end of the episode"),
        ("ExpectColumnValuesToBeInSet", "terminal_matches_success", {"value_set": [True]},
         "terminal and success flags disagree (the suite's episodes end exactly at the goal: a success step "
         "is the terminal one, and a terminal step a success)"),
        ("ExpectColumnValuesToBeInSet", "outcome_matches_success", {"value_set": [True]},
         "outcome disagrees with the last step's success flag"),
        ("ExpectColumnValuesToBeInSet", "instruction_matches_task", {"value_set": [True]},
         "instruction is not the task's"),
        ("ExpectColumnValuesToBeInSet", "source_allowed", {"value_set": [True]},
         "source not allowed for this uploader (robots upload rollouts only, teleoperators demonstrations and play)"),
        ("ExpectColumnValuesToBeInSet", "version_matches_source", {"value_set": [True]},
         f"policy version and source disagree (rollouts name a release, demonstrations and play {TELEOP_POLICY_VERSION!r})"),
        ("ExpectColumnValuesToBeInSet", "interventions_match_source", {"value_set": [True]},
         "intervention steps in a demonstration or play episode (only a robot's rollout can be taken over)"),
        ("ExpectColumnValuesToBeInSet", "interventions_act_step_by_step", {"value_set": [True]},
         "intervention step inside a policy's action chunk (a person's takeover acts one step at a time, chunk_pos 0)"),
    ]


@lru_cache(maxsize=4)
def _validator(exp: Expectations):
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    context = gx.get_context(mode="ephemeral", project_config=DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(), progress_bars=ProgressBarsConfig(globally=False)))
    batch = context.data_sources.add_pandas("episodes").add_dataframe_asset("steps") \
        .add_batch_definition_whole_dataframe("micro-batch")
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    reasons = {}
    for kind, column, kwargs, reason in _suite_spec(exp):
        expectation = suite.add_expectation(getattr(gx.expectations, kind)(column=column, **kwargs))
        reasons[expectation.id] = reason
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=SUITE_NAME, data=batch, suite=suite))
    return definition, reasons


def _holds(kind: str, column: str, kwargs: dict) -> pl.Expr:
    """One expectation as a polars predicate over the whole column, with GX's semantics (in-set
    membership; inclusive bounds; nulls ignored)."""
    values = pl.col(column)
    if kind == "ExpectColumnValuesToBeInSet":
        return values.is_in(list(kwargs["value_set"])).all()
    if kind == "ExpectColumnValuesToBeBetween":
        holds = pl.lit(True)
        if kwargs.get("min_value") is not None:
            holds &= values >= kwargs["min_value"]
        if kwargs.get("max_value") is not None:
            holds &= values <= kwargs["max_value"]
        return holds.all()
    raise NotImplementedError(f"no vectorised form of {kind}: add one, or every batch runs GX")


def passes_precheck(frame: pl.DataFrame, exp: Expectations) -> bool:
    """Every expectation of the suite evaluated in one vectorised pass. True means GX would pass the
    batch too, so a clean batch needs no GX run; any failure goes to GX for its per-episode reasons."""
    checks = frame.select([_holds(kind, column, kwargs).alias(str(index))
                           for index, (kind, column, kwargs, _) in enumerate(_suite_spec(exp))])
    return all(checks.row(0))


def validate_episodes(episodes: list[Episode], exp: Expectations, *, precheck: bool = True) -> ValidationReport:
    """Run the suite on a micro-batch of parsed episodes; failing ids with every reason that applies.
    A batch that passes the vectorised pre-check of the same suite skips the (slower) GX run."""
    report = ValidationReport()
    if not episodes:
        return report
    frame = check_frame(episodes, exp)
    if precheck and passes_precheck(frame, exp):
        return report
    definition, reasons = _validator(exp)
    result = definition.run(batch_parameters={"dataframe": frame.to_pandas()}, result_format={
        "result_format": "COMPLETE", "unexpected_index_column_names": ["episode_id"]})
    for outcome in result.results:
        if outcome.success:
            continue
        reason = reasons.get(outcome.expectation_config.id, outcome.expectation_config.type)
        failed_ids = {row["episode_id"] for row in outcome.result.get("unexpected_index_list") or []}
        if not failed_ids and outcome.exception_info.get("raised_exception"):
            failed_ids = {e.episode_id for e in episodes}  # the check itself broke: trust none of the batch
            reason = f"{reason} (check failed: {outcome.exception_info.get('exception_message')})"
        for episode_id in sorted(failed_ids):
            report.failures.setdefault(episode_id, []).append(reason)
    return report
