from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import make_episode

from lwd_core.algo.agents.hgdagger import human_subset as hgdagger_subset
from lwd_core.algo.agents.recap import CONDITION_NEGATIVE, CONDITION_POSITIVE
from lwd_core.algo.agents.recap import advantage_conditions as recap_conditions
from lwd_core.algo.checkpoint import load_checkpoint, load_policy, save_checkpoint
from lwd_core.algo.flow import euler_sample
from lwd_core.algo.learner import Learner, LearnerSpec
from lwd_core.algo.replay import MixedReplay
from lwd_core.algo.text import tokenize
from lwd_core.data.layout import get_episode
from lwd_core.data.nstep import build_transitions
from lwd_core.config import AlgoConfig
from lwd_core.store import IntegrityError

OBS, ACT = 6, 2


# Each agent's settings for the tiny learner (what it does not name keeps the agent's default).
TINY_AGENTS = {"lwd": dict(critic_heads=2, value_size=21, value_min=-20.0, target_tau=0.05),
               "recap": dict(value_size=21, value_min=-20.0)}


def tiny_spec(method: str = "lwd", compute_dtype: str = "float32", **agent) -> LearnerSpec:
    algo = AlgoConfig(action_chunk=2, hidden_dims=[32, 32], flow_steps=4, learning_rate=1e-3,
                      compute_dtype=compute_dtype)
    settings = {**TINY_AGENTS.get(method, {}), **agent}
    return LearnerSpec.from_config(algo.with_agent(method, **settings), OBS, ACT, method)


@pytest.fixture(scope="module")
def transitions():
    tasks = ["task-a", "task-b"]
    episodes = [
        make_episode(steps=20, obs_dim=OBS, action_dim=ACT, task_id=tasks[i % 2], seed=i, success=i % 3 != 0,
                     source="demo" if i < 2 else "rollout")
        for i in range(8)
    ]
    return build_transitions(
        episodes, [e.rewards for e in episodes], chunk=2, gamma=0.95, n_for_task={"task-a": 3, "task-b": 1},
        task_index={t: i for i, t in enumerate(tasks)},
        tokens_for_task={t: tokenize(f"do {t}") for t in tasks},
    )


def train(learner, state, replay, steps):
    history = []
    for _ in range(steps):
        state, metrics = learner.update(state, replay.sample(64))
        history.append({k: float(v) for k, v in metrics.items()})
    return state, history


def window_mean(history, key, sl):
    return float(np.mean([h[key] for h in history[sl]]))


@pytest.mark.parametrize("value_model, representation", [("divl", "categorical"), ("divl", "quantile"), ("expectile", "categorical")])
def test_smoke_train_lowers_losses(transitions, value_model, representation):
    learner = Learner(tiny_spec(value_model=value_model, value_representation=representation))
    replay = MixedReplay(transitions, seed=0)
    state, history = train(learner, learner.init(0), replay, 300)
    key = "base_flow_loss"
    assert window_mean(history, key, slice(-30, None)) < 0.7 * window_mean(history, key, slice(0, 30)), key
    # TD loss is no learning curve (its targets move as the value grows): compare the trained critic with
    # an untrained one against the same targets instead.
    batch = replay.sample(256)
    untrained = state.replace(params={**state.params, "critic": learner.init(1).params["critic"]})
    td_loss = lambda s: float(learner.update(s, batch, phase="warmup")[1]["critic_loss"])  # noqa: E731
    assert td_loss(state) < 0.2 * td_loss(untrained)
    assert all(np.isfinite(v) for h in history for v in h.values())
    # The critic learned the sign and rough size of returns under the -1 per step reward.
    q_mean = window_mean(history, "q_mean", slice(-30, None))
    assert -20.0 < q_mean < -0.5
    if value_model == "divl":
        assert 0.5 - 1e-6 <= window_mean(history, "divl_tau", slice(-30, None)) <= 0.9 + 1e-6


@pytest.mark.parametrize("method", ["bc", "hgdagger", "recap"])
def test_baseline_methods_train(transitions, method):
    data = hgdagger_subset(transitions) if method == "hgdagger" else dict(transitions)
    if method == "recap":
        data["condition"] = np.where(np.arange(len(data["obs"])) % 2 == 0, CONDITION_POSITIVE, CONDITION_NEGATIVE)
    learner = Learner(tiny_spec(method=method))
    state, history = train(learner, learner.init(0), MixedReplay(data, seed=0), 200)
    assert window_mean(history, "bc_loss", slice(-20, None)) < 0.7 * window_mean(history, "bc_loss", slice(0, 20))
    actions = learner.act(learner.acting_params(state), data["obs"][:5], data["tokens"][:5], jax.random.PRNGKey(0))
    assert actions.shape == (5, 2, ACT) and np.all(np.abs(actions) <= 1.0)


def test_resume_is_exact(transitions, local_store):
    learner = Learner(tiny_spec())
    replay = MixedReplay(transitions, seed=5)
    state, _ = train(learner, learner.init(1), replay, 5)
    save_checkpoint(local_store, "checkpoints/run-1", learner, state, extra={"replay": replay.state_dict()})
    uninterrupted, _ = train(learner, state, replay, 5)

    learner2, restored, manifest = load_checkpoint(local_store, "checkpoints/run-1")
    assert learner2.spec == learner.spec and manifest["step"] == 5
    replay2 = MixedReplay(transitions, seed=123)
    replay2.load_state_dict(manifest["replay"])
    resumed, _ = train(learner2, restored, replay2, 5)
    assert int(resumed.step) == int(uninterrupted.step) == 10
    for a, b in zip(jax.tree_util.tree_leaves(uninterrupted), jax.tree_util.tree_leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_integrity_and_policy_pinning(transitions, local_store):
    learner = Learner(tiny_spec())
    state = learner.init(0)
    manifest = save_checkpoint(local_store, "checkpoints/v7", learner, state)
    policy_sha = manifest["files"]["policy.msgpack"]["sha256"]
    _, params = load_policy(local_store, "checkpoints/v7", expected_sha256=policy_sha)
    for a, b in zip(jax.tree_util.tree_leaves(params["policy"]), jax.tree_util.tree_leaves(state.params["policy"]),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(IntegrityError, match="expected sha256"):
        load_policy(local_store, "checkpoints/v7", expected_sha256="0" * 64)
    local_store.put_atomic("checkpoints/v7/train_state.msgpack", b"\x80garbage")
    with pytest.raises(IntegrityError):
        load_checkpoint(local_store, "checkpoints/v7")


def test_a_checkpoint_spec_records_every_agent_setting_and_refuses_a_partial_one(local_store):
    import json

    spec = tiny_spec(qam_beta=0.03, best_of_n=4)
    written = json.loads(spec.to_json())
    assert written["agent"]["qam_beta"] == 0.03 and written["agent"]["best_of_n"] == 4
    assert set(written["agent"]) == set(type(spec.agent).model_fields), "every hyperparameter, defaults included"
    assert LearnerSpec.from_json(spec.to_json()) == spec
    missing = {**written, "agent": {k: v for k, v in written["agent"].items() if k != "qam_beta"}}
    with pytest.raises(ValueError, match=r"lwd agent does not fit .*missing \['qam_beta'\]"):
        LearnerSpec.from_json(json.dumps(missing))
    unknown = {**written, "qam_temperature": 1.0}
    with pytest.raises(ValueError, match=r"spec.json does not fit .*unknown \['qam_temperature'\]"):
        LearnerSpec.from_json(json.dumps(unknown))
    with pytest.raises(ValueError, match="algo.agents.lwd: qam_temperature: Extra inputs are not permitted"):
        tiny_spec(qam_temperature=1.0)


def test_hgdagger_keeps_only_interventions_and_demos(transitions):
    subset = hgdagger_subset(transitions)
    assert np.all(subset["intervention"] | subset["demo"])
    assert len(subset["obs"]) == int((transitions["intervention"] | transitions["demo"]).sum())
    with pytest.raises(ValueError, match="needs intervention"):
        hgdagger_subset({k: v[~(transitions["intervention"] | transitions["demo"])] for k, v in transitions.items()})


def test_recap_labels_top_fraction_per_task_and_forces_interventions():
    n = 200
    data = {
        "reward": np.zeros(n, np.float32), "discount": np.zeros(n, np.float32),
        "task": np.repeat([0, 1], n // 2), "intervention": np.zeros(n, bool),
    }
    data["intervention"][99] = True  # the lowest advantage of task 0: only the forcing makes it positive
    value = np.concatenate([np.linspace(0, -10, 100), np.linspace(0, -1000, 100)])  # very different scales
    conditions = recap_conditions(data, -value, np.zeros(n), positive_fraction=0.3)
    for task in (0, 1):
        rows = data["task"] == task
        share = np.mean(conditions[rows] == CONDITION_POSITIVE)
        assert 0.28 <= share <= 0.34, (task, share)  # per-task percentile, not one global threshold
    assert conditions[99] == CONDITION_POSITIVE
    assert conditions[98] == CONDITION_NEGATIVE


def changed(before, after) -> set[str]:
    """Parameter groups that moved."""
    return {name for name in before if any(
        not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before[name]),
                                                 jax.tree_util.tree_leaves(after[name]), strict=True))}


@pytest.mark.parametrize("method", ["lwd", "recap", "bc"])
def test_phases_train_only_their_networks(transitions, method):
    learner = Learner(tiny_spec(method=method))
    replay = MixedReplay(transitions, seed=0)
    state = learner.init(0)
    pretrained, _ = learner.update(state, replay.sample(64), "pretrain")
    assert changed(state.params, pretrained.params) == {"base"}
    started = learner.start_from_pretrained(pretrained, pretrained.params["base"])
    for name in ("base", "base_ema", "policy"):
        assert not changed({"x": started.params[name]}, {"x": pretrained.params["base"]})
    warmed, _ = learner.update(started, replay.sample(64), "warmup")
    # The policy (and the base it is regularised toward) stay frozen while critic and value warm up.
    expected = {"lwd": {"critic", "target_critic", "value"}, "recap": {"value"}, "bc": set()}[method]
    assert set(state.params) == {"base", "base_ema", "policy"} | expected | ({"target_critic"} if method == "lwd"
                                                                               else set())
    assert changed(started.params, warmed.params) == expected
    trained, _ = learner.update(warmed, replay.sample(64), "train")
    assert "policy" in changed(warmed.params, trained.params)
    with pytest.raises(ValueError, match="unknown phase"):
        learner.update(state, replay.sample(8), "finetune")


def test_bc_anchor_uses_human_rows_only(transitions):
    """With no demonstration or intervention rows in the batch the BC anchor contributes nothing."""
    learner = Learner(tiny_spec(bc_weight=1.0))
    batch = MixedReplay(transitions, seed=0).sample(64)
    _, metrics = learner.update(learner.init(0), {**batch, "demo": np.zeros(64, bool),
                                                  "intervention": np.zeros(64, bool)})
    assert float(metrics["policy_bc_loss"]) == 0.0
    _, metrics = learner.update(learner.init(0), {**batch, "demo": np.ones(64, bool)})
    assert float(metrics["policy_bc_loss"]) > 0.0


def test_best_of_n_acts_with_the_chunk_the_critic_rates_highest(transitions):
    learner = Learner(tiny_spec(best_of_n=8))
    state = learner.init(0)
    params = learner.acting_params(state)
    assert set(params) == {"policy", "critic"}  # the release carries the critic it picks with
    obs, tokens = transitions["obs"][:3], transitions["tokens"][:3]
    key = jax.random.PRNGKey(4)
    chosen = learner.act(params, obs, tokens, key).reshape(3, -1)
    # The same 8 candidates per row, scored by the critic: the chosen one has the highest Q.
    candidates = np.clip(np.asarray(euler_sample(
        learner.shell.velocity(params["policy"], np.repeat(obs, 8, 0), np.repeat(tokens, 8, 0)),
        jax.random.normal(key, (24, learner.flat_action_dim)), learner.spec.flow_steps)), -1, 1)
    q = np.asarray(learner.agent.critic.apply(params["critic"], np.repeat(obs, 8, 0), np.repeat(tokens, 8, 0),
                                              candidates).mean(0)).reshape(3, 8)
    np.testing.assert_allclose(chosen, candidates.reshape(3, 8, -1)[np.arange(3), q.argmax(1)], atol=1e-6)
    plain = Learner(tiny_spec())
    assert set(plain.acting_params(plain.init(0))) == {"policy"}


def test_racing_snapshot_builds_never_move_the_latest_pointer_back(local_store, monkeypatch):
    """One build lists the buffers; another, after a new episode is buffered, lists and moves the pointer
    before the first writes. The first is refused and lists again: the pointer ends on the newest listing."""
    from lwd_core.data.layout import (
        SNAPSHOT_LATEST_KEY,
        buffer_key,
        buffer_prefix,
        put_episode,
    )
    from lwd_core.data.snapshot import build_snapshot

    def buffer(seed: int) -> None:
        episode = make_episode(steps=5, obs_dim=OBS, action_dim=ACT, task_id="task-a", seed=seed)
        put_episode(local_store, buffer_key("online", episode.task_id, episode.episode_id), episode)

    buffer(500)
    buffer(501)
    first = build_snapshot(local_store)
    real_list = local_store.list
    racing: dict = {}

    def list_then_another_build_runs(prefix: str = "", suffix: str = "") -> list[str]:
        listing = real_list(prefix, suffix)
        if prefix == buffer_prefix("online") and not racing:  # once, and not for the other build's listing
            racing["newer"] = None
            buffer(502)
            racing["newer"] = build_snapshot(local_store)
        return listing

    monkeypatch.setattr(local_store, "list", list_then_another_build_runs)
    slower = build_snapshot(local_store)
    newer = racing["newer"]
    assert len(newer.episodes) == 3 and newer.parent == first.snapshot_id
    assert local_store.get_json(SNAPSHOT_LATEST_KEY) == {"snapshot_id": newer.snapshot_id}, "never moved back"
    assert slower.snapshot_id == newer.snapshot_id, "the slower build listed again"


def test_fused_updates_equal_single_updates(transitions):
    """update_many (one scan, state donated) is the same arithmetic as update called in turn."""
    learner = Learner(tiny_spec())
    replay = MixedReplay(transitions, seed=0)
    batches = [replay.sample(16) for _ in range(3)]
    state = learner.init(0)
    for batch in batches:
        state, _ = learner.update(state, batch)
    fused, metrics = learner.update_many(learner.init(0), {k: np.stack([b[k] for b in batches]) for k in batches[0]})
    assert int(fused.step) == 3 and metrics["critic_loss"].shape == (3,)
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(fused.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)


def test_bfloat16_matmuls_keep_float32_parameters_and_outputs(transitions):
    """compute_dtype bfloat16 runs the hidden layers' matmuls in bfloat16 (a GPU's tensor cores) while
    parameters, optimiser state, outputs and losses stay float32; the learner still learns."""
    learner, default = Learner(tiny_spec(compute_dtype="bfloat16")), Learner(tiny_spec())
    replay = MixedReplay(transitions, seed=0)
    state = learner.init(0)
    batch = replay.sample(64)
    critic_program = lambda lrn: str(jax.make_jaxpr(lrn.agent.critic.apply)(  # noqa: E731
        state.params["critic"], batch["obs"], batch["tokens"], batch["actions"]))
    assert "bf16[" in critic_program(learner)
    assert "bf16[" not in critic_program(default), "the default is untouched float32 arithmetic"
    state, history = train(learner, state, replay, 200)
    assert {str(leaf.dtype) for leaf in jax.tree_util.tree_leaves(state.params)} == {"float32"}
    assert all(np.isfinite(v) for h in history for v in h.values())
    key = "base_flow_loss"
    assert window_mean(history, key, slice(-20, None)) < 0.7 * window_mean(history, key, slice(0, 20))
    actions = learner.act(learner.acting_params(state), batch["obs"][:4], batch["tokens"][:4], jax.random.PRNGKey(0))
    assert actions.dtype == np.float32 and np.all(np.abs(actions) <= 1.0)


def test_suite_instructions_have_no_token_collisions():
    from lwd_core.algo.text import _WORD, VOCAB_SIZE, token_id
    from lwd_core.suite import TASK_SUITE

    words = {w for task in TASK_SUITE for w in _WORD.findall(task.instruction.lower())}
    assert len({token_id(w, VOCAB_SIZE) for w in words}) == len(words)


def test_snapshot_loads_are_capped_and_incremental(local_store, monkeypatch):
    """Within replay_capacity (a choice that holds across rounds), and a second load reads only the
    episodes the first did not hold, with the same rows as a load from scratch; a fresh process reads
    none (the replay segments hold them), an unreadable segment only costs reading its episodes, and
    past the segment limit a load leaves one segment of its whole choice."""
    from lwd_core.algo import transition_cache
    from lwd_core.algo.transition_cache import TransitionCache
    from lwd_core.config import AlgoConfig
    from lwd_core.data.labels import label_buffer
    from lwd_core.data.layout import buffer_key, put_episode
    from lwd_core.data.nstep import NStepSchedule
    from lwd_core.data.snapshot import build_snapshot
    from lwd_core.suite import ACTION_DIM, OBS_DIM, TASK_SUITE

    algo = AlgoConfig(replay_capacity=50)

    def buffered(episodes):
        for episode in episodes:
            put_episode(local_store, buffer_key("online", episode.task_id, episode.episode_id), episode)
        label_buffer(local_store, "online", algo.discount, NStepSchedule.from_config(algo))
        return build_snapshot(local_store)

    task = TASK_SUITE[0].task_id
    episodes = [make_episode(steps=10, obs_dim=OBS_DIM, action_dim=ACTION_DIM, task_id=task, seed=300 + i)
                for i in range(8)]
    first = buffered(episodes[:6])
    reads = []
    monkeypatch.setattr(transition_cache, "get_episode",
                        lambda store, key: reads.append(key) or get_episode(store, key))
    cache = TransitionCache()
    loaded = cache.load(local_store, first, algo, "online").online
    assert len(loaded["obs"]) == 50 and len(reads) == 5
    reads.clear()
    both = buffered(episodes[6:])
    new_keys = {e.key for e in both.episodes} - {e.key for e in first.episodes}
    grown = cache.load(local_store, both, algo, "online").online
    assert len(grown["obs"]) == 50 and set(reads) <= new_keys, "only new episodes are read"
    reads.clear()
    fresh = TransitionCache().load(local_store, both, algo, "online").online  # a fresh process
    assert reads == [], "a fresh process finds the built transitions in the replay segments"
    for name in fresh:
        np.testing.assert_array_equal(grown[name], fresh[name])

    segments = local_store.list("replay-segments/online", ".npz")
    assert len(segments) == 2  # what each of the two loads built
    local_store.put_atomic(segments[0], b"not an npz")
    compacting = TransitionCache()
    compacting.compact_after_segments = 2  # this load's new segment would be the third
    again = compacting.load(local_store, both, algo, "online").online
    assert reads and set(reads) <= {e.key for e in first.episodes}, "only the lost segment's episodes are read"
    for name in fresh:
        np.testing.assert_array_equal(again[name], fresh[name])

    (compacted,) = local_store.list("replay-segments/online", ".npz")
    assert compacted not in segments
    reads.clear()
    last = TransitionCache().load(local_store, both, algo, "online").online
    assert reads == [], "the compacted segment holds the whole choice"
    for name in fresh:
        np.testing.assert_array_equal(last[name], fresh[name])


def test_a_second_process_loads_compiled_programs_from_the_cache(tmp_path):
    import subprocess
    import sys

    program = f"""
import jax, jax.numpy as jnp
from lwd_core.algo.compilation import use_compilation_cache
use_compilation_cache({str(tmp_path / "cache")!r})
hits = []
jax.monitoring.register_event_listener(lambda event, **_: hits.append(event)
                                       if event == "/jax/compilation_cache/cache_hits" else None)
jax.block_until_ready(jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((8, 8))))
print(len(hits))
"""
    runs = [subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300,
                           cwd=Path(__file__).resolve().parent.parent) for _ in range(2)]
    assert [run.returncode for run in runs] == [0, 0], runs[0].stderr[-2000:]
    first, second = (int(run.stdout.split()[-1]) for run in runs)
    assert first == 0 and second >= 1
