"""The experiment protocol at a tiny size: equal budgets, paired disjoint seeds, a significance test."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import make_episode

from lwd_core.algo.learner_process import LearnerProcess
from lwd_core.config import AlgoConfig, ExperimentConfig, HumanConfig, LWDConfig
from lwd_core.experiment import (
    ARMS,
    VALUE_PLOT_FILE,
    Experiment,
    pool_runs,
    pooled_markdown,
    write_report,
)
from lwd_core.sim.evaluate import TaskResult, mcnemar_p, paired_comparison, summarize
from lwd_core.sim.pool import SimPool
from lwd_core.suite import ACTION_DIM, OBS_DIM


def test_mcnemar_counts_only_discordant_pairs():
    same = np.array([True, False, True, False])
    assert mcnemar_p(same, same) == 1.0
    reference = np.array([True] * 10 + [False] * 10)
    other = np.array([False] * 10 + [False] * 10)
    # 10 wins, 0 losses: two-sided exact binomial p = 2 * 0.5**10.
    assert mcnemar_p(reference, other) == pytest.approx(2 * 0.5**10)
    assert mcnemar_p(other, reference) == pytest.approx(2 * 0.5**10)


def _summary(outcomes_by_task: dict[str, list[bool]], seed: int = 0) -> dict:
    results = [TaskResult(task, "short", sum(o), len(o), 100.0, tuple(o)) for task, o in outcomes_by_task.items()]
    return summarize(results) | {"seed": seed}


def test_paired_comparison_pairs_the_same_episodes():
    before = _summary({"a": [False] * 8 + [True] * 2, "b": [True] * 10})
    after = _summary({"a": [True] * 8 + [False] * 2, "b": [True] * 10})
    result = paired_comparison(before, after)
    assert (result["wins"], result["losses"], result["episodes"]) == (8, 2, 20)
    assert result["change"] == pytest.approx(0.3)
    assert result["p_value"] == pytest.approx(2 * (1 + 10 + 45) / 2**10)  # exact binomial, 8 of 10 discordant
    # Different seeds or episode counts are different episodes: no paired test.
    assert paired_comparison(before, after | {"seed": 1}) is None
    assert paired_comparison(before, _summary({"a": [True] * 4, "b": [True] * 10})) is None


def _run(seed: int, reference: float, other: float, wins: int, losses: int, episodes: int = 20) -> dict:
    arm = lambda label, success: {"label": label, "final": {"success": success, "episodes": episodes}}  # noqa: E731
    return {"tasks": ["a"], "eval_seed": 5, "train_seed": seed, "reference_arm": "lwd-online",
            "arms": {"bc": arm("BC", other), "lwd-online": arm("LWD online", reference)},
            "comparisons": {"bc": {"difference": reference - other, "wins": wins, "losses": losses}}}


def test_runs_on_different_training_seeds_pool_into_one_paired_test():
    pooled = pool_runs([_run(0, 0.6, 0.4, wins=5, losses=1), _run(1, 0.5, 0.45, wins=3, losses=2)])
    assert pooled["train_seeds"] == [0, 1]
    assert pooled["arms"]["bc"]["success"] == pytest.approx((8 + 9) / 40)
    assert pooled["arms"]["lwd-online"]["per_run"] == [0.6, 0.5]
    test = pooled["comparisons"]["bc"]
    assert (test["wins"], test["losses"], test["runs_ahead"]) == (8, 3, 2)
    assert test["difference"] == pytest.approx((0.2 + 0.05) / 2)
    assert test["p_value"] == pytest.approx(mcnemar_p(np.array([True] * 8 + [False] * 3),
                                                      np.array([False] * 8 + [True] * 3)))
    assert "BC" in pooled_markdown(pooled) and "LWD online minus it" in pooled_markdown(pooled)
    with pytest.raises(ValueError, match="training seeds repeat"):
        pool_runs([_run(0, 0.6, 0.4, 5, 1), _run(0, 0.6, 0.4, 5, 1)])
    with pytest.raises(ValueError, match="eval_seed"):
        pool_runs([_run(0, 0.6, 0.4, 5, 1), _run(1, 0.6, 0.4, 5, 1) | {"eval_seed": 6}])
    with pytest.raises(ValueError, match="human"):  # an oracle run does not pool with a realistic one
        pool_runs([_run(0, 0.6, 0.4, 5, 1) | {"human": {"kind": "oracle"}}, _run(1, 0.6, 0.4, 5, 1)])


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    algo = AlgoConfig(hidden_dims=[32, 32], batch_size=32, flow_steps=3,
                      agents={"lwd": {"critic_heads": 2, "value_size": 21}, "recap": {"value_size": 21}},
                      pretrain_steps=20, warmup_steps=5, offline_steps=5, online_steps_per_round=5,
                      samples_per_insert=0.0)
    settings = ExperimentConfig(tasks=["restock-horizontal"], rounds=2, episodes_per_round=2,
                                eval_episodes_per_task=3, curve_episodes_per_task=2, demos_per_task=2,
                                failed_rollouts_per_task=1, play_per_task=1)
    with SimPool(1, max_concurrent=4) as pool:
        experiment = Experiment(settings, algo, pool, tmp_path_factory.mktemp("experiment"), log=lambda _: None)
        return experiment, experiment.run()


def test_every_arm_is_measured_with_equal_fleet_budgets(tiny_results):
    experiment, results = tiny_results
    assert set(results["arms"]) == {"pretrained", *ARMS}
    assert results["human"]["kind"] == "realistic"  # reported with the results
    online = [arm for key, arm in results["arms"].items() if key in ARMS and ARMS[key].online]
    assert len(online) == 4
    for arm in online:
        assert [p["round"] for p in arm["curve"]] == [0, 1, 2]
        assert [p["fleet_episodes"] for p in arm["curve"]] == [0, 2, 4]  # the same budget for every arm
    for arm in results["arms"].values():
        assert arm["final"]["episodes"] == 3 == len(arm["final"]["outcomes"]["restock-horizontal"])
    # LWD online against every other arm on the same evaluation episodes.
    assert set(results["comparisons"]) == set(results["arms"]) - {"lwd-online"}
    assert all(0.0 <= c["p_value"] <= 1.0 for c in results["comparisons"].values())


def test_the_value_arms_report_what_their_value_model_learned(tiny_results, tmp_path):
    _, results = tiny_results
    lwd, iql = results["arms"]["lwd-online"]["value"], results["arms"]["iql"]["value"]
    # DIVL's tau over every logged window of the offline stage and both rounds, inside its bounds.
    training = lwd["training"]
    assert len(training["tau"]) == len(training["entropy"]) == training["run_ends"][-1] > 0
    assert len(training["run_ends"]) == 3 and all(0.5 <= tau <= 0.9 for tau in training["tau"])
    assert iql["training"]["tau"] == []  # the expectile ablation has no tau
    demonstrations = lwd["groups"]["demonstrations"]
    assert sum(demonstrations["distribution"]) == pytest.approx(1.0, abs=1e-3)
    assert len(demonstrations["distribution"]) == len(lwd["atoms"])
    assert "distribution" not in iql["groups"]["demonstrations"] and "value" in iql["groups"]["demonstrations"]
    assert "value" not in results["arms"]["bc"]  # no value model
    write_report(results, tmp_path)
    assert (tmp_path / VALUE_PLOT_FILE).stat().st_size > 0


def test_the_mlflow_record_carries_divl_tau_and_the_value_plot(tiny_results, tmp_path):
    from mlflow import MlflowClient

    from tasks.mlflow_adapter import log_experiment

    _, results = tiny_results
    config = LWDConfig(data_dir=str(tmp_path))
    write_report(results, tmp_path / "report")
    run_id = log_experiment(config, "exp-test", results, "table", [tmp_path / "report" / VALUE_PLOT_FILE])
    client = MlflowClient(config.tracking.mlflow_uri)
    parent = client.get_run(run_id)
    (lwd_run,) = client.search_runs([parent.info.experiment_id], "tags.arm = 'LWD online'")
    history = sorted(client.get_metric_history(lwd_run.info.run_id, "divl_tau"), key=lambda m: m.step)
    assert [m.value for m in history] == pytest.approx(results["arms"]["lwd-online"]["value"]["training"]["tau"])
    assert VALUE_PLOT_FILE in [a.path for a in client.list_artifacts(run_id)]


def test_evaluation_seeds_are_fixed_and_disjoint_from_training_seeds(tiny_results):
    experiment, _ = tiny_results
    evaluation = [r.seed for r in experiment.eval_requests(3)]
    assert evaluation == [r.seed for r in experiment.eval_requests(3)]
    training = {r.seed for k in (1, 2) for r in experiment.fleet_requests(k)}
    assert not set(evaluation) & training
    # The same fleet round starts from the same states for every arm, and rounds differ.
    assert experiment.fleet_requests(1) == experiment.fleet_requests(1)
    assert experiment.fleet_requests(1) != experiment.fleet_requests(2)
    # The realistic person watches the fleet (the default); nobody helps during evaluation.
    assert all(r.human == HumanConfig() and r.human.kind == "realistic" for r in experiment.fleet_requests(1))
    assert not any(r.human for r in experiment.eval_requests(3))


def test_unknown_arm_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown arms"):
        Experiment(ExperimentConfig(arms=["bc", "dagger"]), AlgoConfig(), None, tmp_path)


def _offline_and_fleet_episodes() -> tuple[list, list]:
    """Demonstrations, play and failed rollouts of one suite task; then a fleet round with takeovers."""
    task = "restock-horizontal"

    def episode(seed: int, source: str, success: bool, **fields):
        return make_episode(steps=14, obs_dim=OBS_DIM, action_dim=ACTION_DIM, task_id=task, seed=seed,
                            source=source, success=success, **fields)

    offline = ([episode(10 + i, "demo", True) for i in range(3)] + [episode(20 + i, "play", False) for i in range(2)]
               + [episode(30 + i, "rollout", False) for i in range(2)])
    takeover = np.zeros(14, bool)
    takeover[6:] = True
    fleet = [episode(40, "rollout", True, interventions=takeover), episode(41, "rollout", False)]
    return offline, fleet


def _parameters(state) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(state.params)]


@pytest.mark.parametrize("arm_key", ["bc", "hgdagger", "recap", "iql", "lwd-offline"])
def test_the_flywheel_and_the_experiment_train_an_arm_through_the_same_trainer(arm_key, tmp_path):
    """The train flow's learner process on the flywheel's store, and the experiment's own stores (a
    pretraining run, the arm's offline run from it, an online round): the same stages on the same data
    give the same parameters."""
    arm = ARMS[arm_key]
    algo = AlgoConfig(hidden_dims=[16, 16], batch_size=8, flow_steps=2,
                      agents={"lwd": {"critic_heads": 2, "value_size": 11}, "recap": {"value_size": 11}},
                      pretrain_steps=3, warmup_steps=2, offline_steps=4, online_steps_per_round=3,
                      samples_per_insert=0.0, checkpoint_every=3)
    offline, fleet = _offline_and_fleet_episodes()
    experiment = Experiment(ExperimentConfig(tasks=["restock-horizontal"], arms=[arm_key]), algo, None,
                            tmp_path / "experiment", log=lambda _: None)
    arm_algo = experiment.algo_for(arm)

    # The flywheel: every offline episode buffered, labelled and snapshot; `train` with resume off.
    flywheel_store = experiment.store("flywheel")
    experiment.buffer(flywheel_store, "offline", offline)
    process = LearnerProcess(flywheel_store, "", arm_algo, arm.method, False, 0)
    plan = process.plan()
    assert [stage.phase for stage in plan.stages][0] == "pretrain"
    flywheel_offline = process.lead(plan)

    # The experiment: pretraining on demonstrations and play, then the arm from the pretrained checkpoint.
    pretrained = experiment.pretrain([e for e in offline if e.source != "rollout"])
    experiment_offline = experiment.offline_stage(arm, offline, pretrained)
    assert int(experiment_offline.state.step) == int(flywheel_offline.state.step) == plan.target_step
    for ours, theirs in zip(_parameters(flywheel_offline.state), _parameters(experiment_offline.state), strict=True):
        np.testing.assert_array_equal(ours, theirs)

    # One online round, the same budget on both paths.
    steps = experiment.online_updates(1)
    experiment.buffer(flywheel_store, "online", fleet)
    online = LearnerProcess(flywheel_store, "", arm_algo, arm.method, True, steps)
    online_plan = online.plan()
    assert online_plan.kind == "online" and online_plan.stages == tuple(arm_stages(arm.method, arm_algo, steps))
    flywheel_online = online.lead(online_plan)
    experiment_online = experiment.online_round(arm, f"arms/{arm.key}", 1, fleet)
    for ours, theirs in zip(_parameters(flywheel_online.state), _parameters(experiment_online.state), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def arm_stages(method: str, algo: AlgoConfig, steps: int):
    from lwd_core.algo.trainer import new_learner

    return new_learner(algo, method).agent.stages(algo, "online", steps)


def test_gpu_slice_script_runs_at_tiny_size_on_cpu(tmp_path):
    """bench/experiment_slice.py is what a GPU machine runs; its whole path must work here first."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "bench/experiment_slice.py", "--config", "configs/experiment-gpu-slice.yaml", "--tiny",
         "--workers", "1", "--out", str(tmp_path)], cwd=root, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary["final"]) == {"pretrained", "bc", "lwd-offline", "lwd-online"}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["arms"]["lwd-online"]["curve"][-1]["fleet_episodes"] == 2
    assert (tmp_path / "success_vs_experience.png").stat().st_size > 0
