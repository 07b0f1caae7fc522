"""The paper's comparison on our sim suite, as one measured experiment (pure library: the Prefect flow
``flows/experiment.py`` wraps it and logs to MLflow).

Every arm trains through the product's one trainer (:mod:`lwd_core.algo.trainer`) on a local object
store of its own, as the flywheel does: episodes go into the store's buffers, the label stage's rule
labels their rewards, a snapshot names them, and the trainer plans and runs the agent's stages.

1. Offline data: clean demonstrations, play, and failed rollouts *of the pretrained policy* per task.
2. Pretrained policy: BC flow matching on the demonstrations (the stand-in for the pretrained VLA),
   one pretraining run. Every arm's store starts from this one checkpoint.
3. Offline stage, the agent's stage plan (``warmup_steps + offline_steps`` updates): BC continues on
   demonstrations; LWD and IQL warm up critic and value with the policy frozen, then extract (QAM + BC
   anchor); RECAP warms up its value, then trains its advantage-conditioned policy. HG-DAgger is BC on
   human data only, so it starts its online rounds from the pretrained policy itself.
4. Online rounds for the arms that learn from the fleet (HG-DAgger, RECAP, IQL, LWD online): each round
   the arm's current policy runs the same number of fleet episodes from the same initial states (training
   seeds), with the same human (``experiment.human``, realistic by default, recorded in the results)
   taking over stalled or drifting rollouts; then the same number of updates on mixed offline/online
   replay.
5. Evaluation: fixed evaluation seeds (disjoint from every training seed, checked), the same episodes for
   every arm, Wilson intervals per arm, and an exact McNemar test on the paired episodes for
   "LWD online vs each arm".
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lwd_core.algo.learner import Learner, TrainState
from lwd_core.algo.method_names import MethodName
from lwd_core.algo.trainer import (
    TrainingPlan,
    TrainResult,
    online_update_budget,
    plan_pretraining,
    plan_training,
    run_training,
    use_pretrained,
)
from lwd_core.algo.transition_cache import TransitionCache
from lwd_core.algo.update_loop import LOG_EVERY
from lwd_core.algo.value_diagnostics import value_diagnostics
from lwd_core.config import AlgoConfig, ExperimentConfig
from lwd_core.data.episode import Episode
from lwd_core.data.labels import label_buffer
from lwd_core.data.layout import BufferKind, buffer_key, put_episode
from lwd_core.data.nstep import NStepSchedule
from lwd_core.data.snapshot import Snapshot, build_snapshot
from lwd_core.gating import wilson_interval
from lwd_core.sim.dataset import record_episode
from lwd_core.sim.environment import make_env
from lwd_core.sim.evaluate import eval_seed, learner_policy, mcnemar_p
from lwd_core.sim.pool import EpisodeRequest, SimPool
from lwd_core.store import ObjectStore
from lwd_core.suite import (
    CONTROL_PERIOD_S,
    TASK_SUITE,
    TaskSpec,
    fleet_robot_ids,
    select_tasks,
)

Log = Callable[[str], None]
# Fleet episodes are spread over this many robot ids (the paper's fleet size).
FLEET_ROBOTS = 16


@dataclass(frozen=True)
class Arm:
    key: str
    label: str
    method: MethodName
    # Settings of the method's agent that this arm changes (IQL: LWD with the expectile value).
    agent: dict[str, Any] = field(default_factory=dict)
    online: bool = False
    # Continue another arm's offline result instead of training one (LWD online continues LWD offline).
    continues: str = ""


ARMS: dict[str, Arm] = {arm.key: arm for arm in (
    Arm("bc", "BC", "bc"),
    Arm("hgdagger", "HG-DAgger", "hgdagger", online=True),
    Arm("recap", "RECAP", "recap", online=True),
    Arm("iql", "IQL (expectile)", "lwd", agent={"value_model": "expectile"}, online=True),
    Arm("lwd-offline", "LWD offline", "lwd"),
    Arm("lwd-online", "LWD online", "lwd", online=True, continues="lwd-offline"),
)}
REFERENCE_ARM = "lwd-online"


def train_seed(base: int, kind: str, task_id: str, index: int) -> int:
    """Training-side seeds (data, fleet rounds): a namespace disjoint from :func:`eval_seed`'s."""
    return int.from_bytes(hashlib.sha256(f"train/{base}/{kind}/{task_id}/{index}".encode()).digest()[:4], "little")


def experiment_tasks(task_ids: list[str]) -> tuple[TaskSpec, ...]:
    return select_tasks(task_ids) if task_ids else tuple(t for t in TASK_SUITE if t.group == "short")


def success_summary(outcomes: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per-task success and the suite mean with a 95% Wilson interval over all episodes, and each episode's
    outcome (in evaluation-seed order, so any two arms can be paired later)."""
    flat = np.concatenate(list(outcomes.values()))
    low, high = wilson_interval(int(flat.sum()), len(flat))
    return {"success": float(flat.mean()), "ci": [low, high], "episodes": len(flat),
            "per_task": {task: float(o.mean()) for task, o in outcomes.items()},
            "outcomes": {task: o.astype(int).tolist() for task, o in outcomes.items()}}


class Experiment:
    """Runs the arms; every stage reports through ``log``. ``settings`` is the config's ``experiment``
    section and ``algo`` its ``algo`` section (both pydantic models; read only). The arms' stores live
    under ``root``: ``pretrain/`` (demonstrations and play, the pretraining run) and ``arms/<arm>/``."""

    def __init__(self, settings: ExperimentConfig, algo: AlgoConfig, pool: SimPool | None, root: Path,
                 log: Log = print):
        self.settings, self.algo, self.pool, self.root, self.log = settings, algo, pool, Path(root), log
        self.tasks = experiment_tasks(settings.tasks)
        unknown = [a for a in settings.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arms {unknown}; expected some of {sorted(ARMS)}")
        self.offline: list[Episode] = []
        self.data_report: dict[str, Any] = {}
        self._caches: dict[str, TransitionCache] = {}

    # -- seeds ---------------------------------------------------------------------------------------
    def eval_requests(self, per_task: int) -> list[EpisodeRequest]:
        return [EpisodeRequest(task.task_id, eval_seed(self.settings.eval_seed, task.task_id, i),
                               policy_version="eval") for task in self.tasks for i in range(per_task)]

    def fleet_requests(self, round_index: int) -> list[EpisodeRequest]:
        robots, tasks = fleet_robot_ids(FLEET_ROBOTS), self.tasks
        requests = []
        for i in range(self.settings.episodes_per_round):
            task_id = tasks[i % len(tasks)].task_id
            seed = train_seed(self.settings.train_seed, f"fleet-round{round_index}", task_id, i // len(tasks))
            requests.append(EpisodeRequest(task_id, seed, robot_id=robots[i % len(robots)],
                                           policy_version=f"round{round_index}", human=self.settings.human))
        return requests

    def check_seeds_disjoint(self) -> None:
        evaluation = {r.seed for r in self.eval_requests(self.settings.eval_episodes_per_task)}
        training = {r.seed for k in range(1, self.settings.rounds + 1) for r in self.fleet_requests(k)}
        training |= {train_seed(self.settings.train_seed, kind, t.task_id, i) for t in self.tasks
                     for kind, n in self._offline_counts().items() for i in range(2 * n)}
        overlap = evaluation & training
        if overlap:
            raise ValueError(f"evaluation and training seeds overlap: {sorted(overlap)[:5]}")

    def _offline_counts(self) -> dict[str, int]:
        s = self.settings
        return {"demo": s.demos_per_task, "play": s.play_per_task, "failed_rollout": s.failed_rollouts_per_task}

    # -- policies ------------------------------------------------------------------------------------
    def policy(self, learner: Learner, state: TrainState, seed: int, requests: int):
        return learner_policy(learner, learner.acting_params(state), seed,
                              batch_size=min(requests, self.pool.max_batch))

    def evaluate(self, learner: Learner, state: TrainState, per_task: int) -> dict[str, np.ndarray]:
        requests = self.eval_requests(per_task)
        episodes = self.pool.run(requests, self.policy(learner, state, self.settings.eval_seed, len(requests)))
        outcomes: dict[str, list[bool]] = {t.task_id: [] for t in self.tasks}
        for episode in episodes:
            outcomes[episode.task_id].append(episode.outcome == "success")
        return {task: np.asarray(o, bool) for task, o in outcomes.items()}

    # -- data ----------------------------------------------------------------------------------------
    def make_offline_data(self) -> list[Episode]:
        """Demonstrations and play now; failed rollouts once the pretrained policy exists."""
        episodes = []
        for task in self.tasks:
            env = make_env(task)
            for kind in ("demo", "play"):
                for i in range(self._offline_counts()[kind]):
                    episodes.append(record_episode(env, task, kind, train_seed(self.settings.train_seed, kind,
                                                                                task.task_id, i)))
            env.close()
        return episodes

    def failed_rollouts(self, learner: Learner, state: TrainState) -> list[Episode]:
        """Rollouts of the pretrained policy on training seeds, failures kept (two tries per wanted failure)."""
        wanted = self.settings.failed_rollouts_per_task
        if wanted == 0:
            return []
        requests = [EpisodeRequest(t.task_id, train_seed(self.settings.train_seed, "failed_rollout", t.task_id, i),
                                   robot_id="pretrain-fleet", policy_version="pretrained")
                    for t in self.tasks for i in range(2 * wanted)]
        episodes = self.pool.run(requests, self.policy(learner, state, self.settings.train_seed, len(requests)))
        kept, tried = [], {t.task_id: 0 for t in self.tasks}
        for task in self.tasks:
            mine = [e for e in episodes if e.task_id == task.task_id]
            tried[task.task_id] = len(mine)
            kept += [e for e in mine if e.outcome == "failure"][:wanted]
        self.data_report["pretrained_rollout_success"] = {
            t.task_id: float(np.mean([e.outcome == "success" for e in episodes if e.task_id == t.task_id]))
            for t in self.tasks}
        return kept

    # -- training: the product's trainer on a local store per arm -------------------------------------
    def store(self, name: str) -> ObjectStore:
        return ObjectStore((self.root / name).as_uri())

    def buffer(self, store: ObjectStore, kind: BufferKind, episodes: list[Episode]) -> Snapshot:
        """Episodes into one of the store's buffers, labelled by the label stage, and the snapshot."""
        for episode in episodes:
            put_episode(store, buffer_key(kind, episode.task_id, episode.episode_id), episode)
        label_buffer(store, kind, self.algo.discount, NStepSchedule.from_config(self.algo))
        return build_snapshot(store)

    def algo_for(self, arm: Arm) -> AlgoConfig:
        return self.algo.with_agent(arm.method, **arm.agent)

    def train(self, store_name: str, snapshot: Snapshot, method: str, algo: AlgoConfig, resume: bool,
              steps: int = 0) -> TrainResult:
        """One run of the trainer, planned as the flywheel's ``train`` flow plans it."""
        plan = plan_training(self.store(store_name), snapshot, algo, method, resume=resume, steps=steps)
        return self._run(store_name, snapshot, plan, algo)

    def pretrain(self, demos_and_play: list[Episode]) -> TrainResult:
        """The pretrained policy every arm starts from: a pretraining run on the demonstrations."""
        snapshot = self.buffer(self.store("pretrain"), "offline", demos_and_play)
        plan = plan_pretraining(self.store("pretrain"), snapshot, self.algo)
        return self._run("pretrain", snapshot, plan, self.algo, move_latest=False)

    def _run(self, store_name: str, snapshot: Snapshot, plan: TrainingPlan, algo: AlgoConfig,
             move_latest: bool = True) -> TrainResult:
        """The plan on the snapshot's transitions, kept per store between this experiment's runs."""
        store = self.store(store_name)
        buffers = self._caches.setdefault(store_name, TransitionCache()).load(store, snapshot, algo, plan.kind)
        return run_training(store, plan, algo, buffers, move_latest=move_latest)

    def offline_stage(self, arm: Arm, offline: list[Episode], pretrained: TrainResult) -> TrainResult:
        """The arm's offline run on every offline episode, from the pretrained checkpoint, in its store
        ``arms/<arm>``."""
        name = f"arms/{arm.key}"
        use_pretrained(self.store(name), self.store("pretrain"), pretrained.checkpoint)
        snapshot = self.buffer(self.store(name), "offline", offline)
        return self.train(name, snapshot, arm.method, self.algo_for(arm), resume=False)

    def online_round(self, arm: Arm, name: str, round_index: int, fleet: list[Episode]) -> TrainResult:
        """The round's fleet episodes into the online buffer of the store ``name``, then the round's
        updates from its latest checkpoint."""
        snapshot = self.buffer(self.store(name), "online", fleet)
        return self.train(name, snapshot, arm.method, self.algo_for(arm), resume=True,
                          steps=self.online_updates(round_index))

    def online_updates(self, round_index: int) -> int:
        """Updates in a round, the same for every arm: sized for the largest online buffer the round can
        hold (rounds x episodes x time limit), so every arm meets the update-to-data ratio."""
        most = round_index * self.settings.episodes_per_round * max(t.horizon for t in self.tasks)
        return online_update_budget(self.algo, most)

    # -- the experiment ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        s, algo = self.settings, self.algo
        started = time.monotonic()
        self.check_seeds_disjoint()
        arms = [ARMS[key] for key in s.arms]
        demos_and_play = self.make_offline_data()
        demos = [e for e in demos_and_play if e.source == "demo"]
        self.log(f"offline data: {len(demos)} demonstrations, {len(demos_and_play) - len(demos)} play episodes")

        # Stage 1: the pretrained policy.
        pretrained = self.pretrain(demos_and_play)
        self.offline = demos_and_play + self.failed_rollouts(pretrained.learner, pretrained.state)
        self.data_report.update(self._data_summary())
        shares = ", ".join(f"{kind} {share:.0%}" for kind, share in self.data_report["share_by_kind"].items())
        self.log(f"pretrained; offline data: {self.data_report['episodes']} episodes, "
                 f"{self.data_report['steps']} steps ({shares})")

        results: dict[str, dict[str, Any]] = {}
        final_outcomes: dict[str, dict[str, np.ndarray]] = {}
        pretrained_eval = self.evaluate(pretrained.learner, pretrained.state, s.eval_episodes_per_task)
        results["pretrained"] = {"label": "Pretrained (BC on demos)", "final": success_summary(pretrained_eval),
                                 "curve": [], "online": False}
        final_outcomes["pretrained"] = pretrained_eval
        self.log(f"pretrained: {results['pretrained']['final']['success']:.1%}")

        offline_results: dict[str, TrainResult] = {}
        for arm in arms:
            arm_started = time.monotonic()
            if arm.continues and arm.continues in offline_results:
                trained, store_name = offline_results[arm.continues], f"arms/{arm.continues}"
            else:
                trained, store_name = self.offline_stage(arm, self.offline, pretrained), f"arms/{arm.key}"
            offline_results[arm.key] = trained
            learner, state = trained.learner, trained.state
            curve, online, histories = [], [], [trained.history]
            if arm.online:
                curve.append(self._curve_point(0, 0, 0, 0, learner, state))
                for round_index in range(1, s.rounds + 1):
                    requests = self.fleet_requests(round_index)
                    fleet = self.pool.run(requests, self.policy(learner, state, algo.seed + round_index,
                                                                len(requests)))
                    online += fleet
                    trained = self.online_round(arm, store_name, round_index, fleet)
                    learner, state = trained.learner, trained.state
                    histories.append(trained.history)
                    curve.append(self._curve_point(round_index, len(online), sum(e.num_steps for e in online),
                                                   sum(int(e.interventions.sum()) for e in online), learner, state,
                                                   fleet))
                    self.log(f"{arm.label} round {round_index}: {describe_point(curve[-1])}")
            outcomes = self.evaluate(learner, state, s.eval_episodes_per_task)
            final_outcomes[arm.key] = outcomes
            results[arm.key] = {"label": arm.label, "online": arm.online, "final": success_summary(outcomes),
                                "curve": curve, "seconds": round(time.monotonic() - arm_started, 1)}
            value = value_diagnostics(trained, histories)
            if value is not None:
                results[arm.key]["value"] = value
            self.log(f"{arm.label}: {results[arm.key]['final']['success']:.1%} "
                     f"({results[arm.key]['seconds']:.0f}s)")

        comparisons = {}
        if REFERENCE_ARM in final_outcomes:
            reference = np.concatenate(list(final_outcomes[REFERENCE_ARM].values()))
            for key, outcomes in final_outcomes.items():
                if key != REFERENCE_ARM:
                    other = np.concatenate(list(outcomes.values()))
                    comparisons[key] = {"difference": float(reference.mean() - other.mean()),
                                        "wins": int(np.sum(reference & ~other)),
                                        "losses": int(np.sum(~reference & other)),
                                        "p_value": mcnemar_p(reference, other)}
        return {"tasks": [t.task_id for t in self.tasks], "arms": results, "comparisons": comparisons,
                "reference_arm": REFERENCE_ARM,
                "updates_per_round": [self.online_updates(k) for k in range(1, s.rounds + 1)],
                "eval_seed": s.eval_seed, "train_seed": s.train_seed, "data": self.data_report,
                "human": s.human.model_dump(mode="json"),
                "minutes": round((time.monotonic() - started) / 60, 2)}

    def _curve_point(self, round_index: int, episodes: int, steps: int, interventions: int, learner: Learner,
                     state: TrainState, fleet: list[Episode] | None = None) -> dict[str, Any]:
        summary = success_summary(self.evaluate(learner, state, self.settings.curve_episodes_per_task))
        point = {"round": round_index, "fleet_episodes": episodes, "fleet_steps": steps,
                 "fleet_hours": steps * CONTROL_PERIOD_S / 3600, "intervention_steps": interventions,
                 "success": summary["success"], "ci": summary["ci"]}
        if fleet:
            point["fleet_success_autonomous"] = float(np.mean(
                [e.outcome == "success" and not e.interventions.any() for e in fleet]))
        return point

    def _data_summary(self) -> dict[str, Any]:
        by_kind: dict[str, int] = {}
        for e in self.offline:
            kind = "failed_rollout" if e.source == "rollout" else e.source
            by_kind[kind] = by_kind.get(kind, 0) + e.num_steps
        total = sum(by_kind.values())
        return {"episodes": len(self.offline), "steps": total,
                "share_by_kind": {k: round(v / total, 3) for k, v in by_kind.items()}}


def describe_point(point: dict[str, Any]) -> str:
    """A curve point as a person reads it in the log."""
    low, high = point["ci"]
    text = (f"success {point['success']:.1%} [{low:.0%}, {high:.0%}] after {point['fleet_episodes']} fleet episodes "
            f"({point['fleet_hours']:.2f} robot hours, {point['intervention_steps']} intervention steps)")
    if "fleet_success_autonomous" in point:
        text += f"; the fleet's autonomous success this round {point['fleet_success_autonomous']:.0%}"
    return text


PLOT_FILE = "success_vs_experience.png"
RESULTS_FILE = "results.json"


def write_report(results: dict[str, Any], out_dir: Path) -> str:
    """results.json, results.md (returned) and the success-vs-experience plot under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results)
    (out_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(table + "\n")
    plot(results, out_dir / PLOT_FILE)
    plot_value_diagnostics(results, out_dir / VALUE_PLOT_FILE)
    return table


def markdown_table(results: dict) -> str:
    tasks = results["tasks"]
    comparisons = results["comparisons"]
    header = ["method", "fleet hours", "mean success (95% CI)", *tasks, f"vs {results['reference_arm']}: p"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, arm in results["arms"].items():
        final = arm["final"]
        hours = arm["curve"][-1]["fleet_hours"] if arm["curve"] else 0.0
        test = comparisons.get(key)
        p = f"{test['p_value']:.3g} ({test['difference']:+.0%})" if test else "-"
        cells = [arm["label"], f"{hours:.2f}", f"{final['success']:.1%} [{final['ci'][0]:.0%}, {final['ci'][1]:.0%}]",
                 *[f"{final['per_task'][t]:.0%}" for t in tasks], p]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for index, (key, arm) in enumerate(results["arms"].items()):
        colour = f"C{index}"
        if arm["curve"]:
            xs = [p["fleet_hours"] for p in arm["curve"]]
            ys = [p["success"] for p in arm["curve"]]
            low = [p["ci"][0] for p in arm["curve"]]
            high = [p["ci"][1] for p in arm["curve"]]
            ax.plot(xs, ys, "o-", color=colour, label=arm["label"])
            ax.fill_between(xs, low, high, color=colour, alpha=0.12)
        else:
            ax.axhline(arm["final"]["success"], linestyle="--", linewidth=1, color=colour, label=f"{arm['label']} (offline)")
    ax.set_xlabel("fleet experience (robot hours)")
    ax.set_ylabel(f"mean success ({len(results['tasks'])} tasks)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


VALUE_PLOT_FILE = "value_diagnostics.png"


def plot_value_diagnostics(results: dict, path: Path) -> bool:
    """The DIVL vs expectile ablation's plot: DIVL's tau and entropy over training, the reference arm's
    learned return distribution per data source, and every value arm's values beside the Monte Carlo
    returns. False (nothing written) when no arm has a value model."""
    arms = {key: arm for key, arm in results["arms"].items() if arm.get("value")}
    if not arms:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tau, ax_dist, ax_bars) = plt.subplots(1, 3, figsize=(17, 4.5))
    for index, (key, arm) in enumerate(arms.items()):
        training = arm["value"]["training"]
        continued = any(ARMS[other].continues == key for other in arms if other in ARMS)  # its tau starts the other's
        if training["tau"] and not continued:
            ax_tau.plot(training["tau"], color=f"C{index}", label=f"{arm['label']}: tau")
            ax_tau.plot(training["entropy"], color=f"C{index}", linestyle=":", label=f"{arm['label']}: entropy")
            for end in training["run_ends"][:-1]:
                ax_tau.axvline(end, color="grey", linewidth=0.6, alpha=0.5)
    ax_tau.set(title="DIVL's bootstrap quantile over training", xlabel=f"logged window ({LOG_EVERY} updates; lines: runs)",
               ylim=(0, 1))
    ax_tau.legend(fontsize=7)

    shown = next((key for key in (results.get("reference_arm"), *arms) if key in arms
                  and any("distribution" in g for g in arms[key]["value"]["groups"].values())), None)
    if shown:
        value = arms[shown]["value"]
        for index, (group, entry) in enumerate(value["groups"].items()):
            ax_dist.plot(value["atoms"], entry["distribution"], color=f"C{index}", label=f"{group} (n={entry['rows']})")
            ax_dist.axvline(entry["mc_return"], color=f"C{index}", linestyle="--", linewidth=0.8)
        ax_dist.set(title=f"{arms[shown]['label']}: mean learned return distribution", xlabel="return (dashed: Monte Carlo mean)",
                    ylabel="probability")
        ax_dist.legend(fontsize=7)

    groups = list(dict.fromkeys(g for arm in arms.values() for g in arm["value"]["groups"]))
    first = arms[shown or next(iter(arms))]["value"]["groups"]
    bars = [("Monte Carlo return", {g: e["mc_return"] for g, e in first.items()})]
    for arm in arms.values():
        entries = arm["value"]["groups"]
        bars.append((f"{arm['label']}: value", {g: e["value"] for g, e in entries.items()}))
        if any("bootstrap" in e for e in entries.values()):
            bars.append((f"{arm['label']}: bootstrap (tau-quantile)", {g: e["bootstrap"] for g, e in entries.items()}))
    width = 0.8 / len(bars)
    for index, (label, heights) in enumerate(bars):
        ax_bars.bar(np.arange(len(groups)) + index * width, [heights.get(g, np.nan) for g in groups], width,
                    label=label, color=f"C{index}")
    ax_bars.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, fontsize=8)
    ax_bars.set(title="Values on replay states by who acted", ylabel="return")
    ax_bars.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def pool_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one experiment on different training seeds (results.json of each), pooled.

    Per arm: success over every evaluation episode of every run (Wilson interval) and each run's
    success. Per comparison with the reference arm: the runs' paired wins and losses summed and one
    exact sign test on them (McNemar stratified by run: under "no difference" every discordant pair is
    a fair coin whichever run it comes from), and each run's difference. The test treats each run's
    trained policies as given; the spread of the per-run differences is what training seeds add.
    """
    from scipy.stats import binomtest

    if len(runs) < 2:
        raise ValueError("pooling needs at least two runs")
    first = runs[0]
    for run in runs[1:]:
        for name in ("tasks", "eval_seed", "reference_arm", "human"):  # runs before "human" was recorded: None
            if run.get(name) != first.get(name):
                raise ValueError(f"runs differ in {name}: {first.get(name)!r} vs {run.get(name)!r}; only runs "
                                 "of one experiment on different training seeds pool")
    seeds = [run["train_seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"training seeds repeat ({seeds}): the same run counted twice")
    arms: dict[str, Any] = {}
    for key, arm in first["arms"].items():
        if any(key not in run["arms"] for run in runs):
            continue
        finals = [run["arms"][key]["final"] for run in runs]
        if len({final["episodes"] for final in finals}) != 1:
            raise ValueError(f"arm {key!r} was evaluated on different episode counts across runs")
        successes = sum(round(final["success"] * final["episodes"]) for final in finals)
        episodes = sum(final["episodes"] for final in finals)
        arms[key] = {"label": arm["label"], "success": successes / episodes,
                     "ci": list(wilson_interval(successes, episodes)), "episodes": episodes,
                     "per_run": [final["success"] for final in finals]}
    comparisons: dict[str, Any] = {}
    for key in arms:
        tests = [run["comparisons"].get(key) for run in runs]
        if key == first["reference_arm"] or any(test is None for test in tests):
            continue
        wins, losses = sum(t["wins"] for t in tests), sum(t["losses"] for t in tests)
        differences = [t["difference"] for t in tests]
        comparisons[key] = {"difference": float(np.mean(differences)), "per_run": differences,
                            "runs_ahead": sum(d > 0 for d in differences), "wins": wins, "losses": losses,
                            "p_value": 1.0 if wins + losses == 0 else float(binomtest(wins, wins + losses, 0.5).pvalue)}
    return {"tasks": first["tasks"], "eval_seed": first["eval_seed"], "train_seeds": seeds, "human": first.get("human"),
            "reference_arm": first["reference_arm"], "arms": arms, "comparisons": comparisons}


def pooled_markdown(pooled: dict[str, Any]) -> str:
    seeds = pooled["train_seeds"]
    reference = pooled["arms"].get(pooled["reference_arm"], {}).get("label", pooled["reference_arm"])
    header = ["method", "mean success (95% CI)", *[f"seed {s}" for s in seeds],
              f"{reference} minus it (per seed)", "wins / losses", "p"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, arm in pooled["arms"].items():
        test = pooled["comparisons"].get(key)
        cells = [arm["label"], f"{arm['success']:.1%} [{arm['ci'][0]:.0%}, {arm['ci'][1]:.0%}]",
                 *[f"{s:.1%}" for s in arm["per_run"]]]
        if test:
            cells += [f"{test['difference'] * 100:+.1f} ({', '.join(f'{d * 100:+.1f}' for d in test['per_run'])})",
                      f"{test['wins']} / {test['losses']}", f"{test['p_value']:.2g}"]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
