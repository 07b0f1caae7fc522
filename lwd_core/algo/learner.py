"""The learner: networks, optimisers, checkpoint format and one jitted update shared by every method.

The method itself (its losses, data selection and acting condition) is an agent in
:mod:`lwd_core.algo.agents` (``lwd``, ``bc``, ``hgdagger``, ``recap``), looked up by ``spec.method``.

Phases (the paper's staging; ``update(state, batch, phase)``):
- ``pretrain``: flow matching of the base flow on demonstrations, the stand-in for the pretrained VLA,
  the same for every method; :meth:`Learner.start_from_pretrained` then makes it every method's
  starting policy.
- ``warmup``: the agent's critic and value losses only, the policy frozen, so extraction starts from a
  critic that has seen the data instead of a random one.
- ``train``: the agent's full update.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, struct

from lwd_core.algo import divl
from lwd_core.algo.agents import UpdateContext, get_agent
from lwd_core.algo.agents.base import Phase
from lwd_core.algo.flow import euler_sample, flow_matching_loss
from lwd_core.algo.networks import CriticEnsemble
from lwd_core.algo.policy import FlowPolicy
from lwd_core.algo.text import MAX_TOKENS, VOCAB_SIZE

PHASES: tuple[str, ...] = get_args(Phase)
# One PRNG key per purpose in each update.
UPDATE_KEYS = ("base", "policy", "qam", "noise", "dropout")


@dataclass(frozen=True)
class LearnerSpec:
    """Everything that fixes network shapes and the update; stored with every checkpoint."""

    obs_dim: int
    action_dim: int
    chunk: int = 5
    method: str = "lwd"  # an agent name (lwd_core.algo.agents)
    value_model: Literal["divl", "expectile"] = "divl"
    value_representation: Literal["categorical", "quantile"] = "categorical"
    value_size: int = 51
    value_min: float = -100.0
    value_max: float = 0.0
    value_huber_kappa: float = 1.0
    tau_min: float = 0.5
    tau_max: float = 0.9
    tau_direction: Literal["optimistic_when_narrow", "optimistic_when_wide"] = "optimistic_when_narrow"
    expectile: float = 0.9
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    critic_heads: int = 10
    critic_std_weight: float = 0.5
    flow_steps: int = 10
    learning_rate: float = 3e-4
    grad_clip: float = 1.0
    target_tau: float = 0.005
    qam_beta: float = 1.0
    bc_weight: float = 1.0
    base_data: Literal["human", "all"] = "human"
    best_of_n: int = 1
    recap_condition_dropout: float = 0.3
    vocab_size: int = VOCAB_SIZE
    max_tokens: int = MAX_TOKENS
    pixels: bool = False
    # Matmul dtype of the networks' hidden layers; "bfloat16" is for GPUs (parameters, optimiser,
    # LayerNorm, output layers and losses stay float32).
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        get_agent(self.method)  # a clear error for an unknown method
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))

    @classmethod
    def from_config(cls, algo: Any, obs_dim: int, action_dim: int, method: str = "lwd") -> LearnerSpec:
        """The network and update settings of an ``AlgoConfig`` (same field names; its ``action_chunk``
        is ``chunk`` here)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {name: getattr(algo, name) for name in names if hasattr(algo, name)}
        return cls(**values, chunk=algo.action_chunk, obs_dim=obs_dim, action_dim=action_dim, method=method)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LearnerSpec:
        return cls(**json.loads(text))


@struct.dataclass
class TrainState:
    step: jax.Array
    rng: jax.Array
    params: dict[str, Any]
    opt_state: dict[str, Any]


class Learner:
    def __init__(self, spec: LearnerSpec):
        self.spec = spec
        self.agent = get_agent(spec.method)
        hidden = spec.hidden_dims
        dtype = jnp.dtype(spec.compute_dtype)
        self.critic = CriticEnsemble(spec.critic_heads, hidden, spec.vocab_size, spec.pixels, dtype=dtype)
        scalar = self.agent.scalar_value(spec)
        self.value_rep = "quantile" if scalar else spec.value_representation
        self.value = divl.DistributionalValue(
            self.value_rep, 1 if scalar else spec.value_size, hidden, spec.vocab_size, spec.pixels, dtype=dtype
        )
        self.flow = FlowPolicy(spec.chunk, spec.action_dim, hidden, spec.vocab_size, spec.pixels, dtype=dtype)
        self.atoms = divl.support(spec.value_min, spec.value_max, spec.value_size)
        self.tx = optax.chain(optax.clip_by_global_norm(spec.grad_clip), optax.adam(spec.learning_rate))
        self.flat_action_dim = spec.chunk * spec.action_dim
        self._update = jax.jit(self._update_impl, static_argnames="phase")
        # Several updates in one call: a lax.scan over stacked batches, the state donated, so that
        # nothing returns to the host between updates and the old state's buffers are reused.
        self._update_many = jax.jit(self._update_many_impl, static_argnames="phase", donate_argnums=0)
        self._act = jax.jit(self._act_impl)
        self._value_stats = jax.jit(self._value_stats_impl)

    # -- state -------------------------------------------------------------------------------------
    def init(self, seed: int = 0) -> TrainState:
        rng = jax.random.PRNGKey(seed)
        rng, k_critic, k_value, k_flow = jax.random.split(rng, 4)
        obs = jnp.zeros((1, self.spec.obs_dim), jnp.float32)
        tokens = jnp.zeros((1, self.spec.max_tokens), jnp.int32)
        actions = jnp.zeros((1, self.flat_action_dim), jnp.float32)
        critic = self.critic.init(k_critic, obs, tokens, actions)
        copy = partial(jax.tree_util.tree_map, jnp.copy)  # distinct buffers: updates may donate the state
        value = self.value.init(k_value, obs, tokens)
        base = self.flow.init(k_flow, obs, tokens, actions, jnp.zeros((1,)))
        params = {
            "critic": critic,
            "target_critic": copy(critic),
            "value": value,
            "base": base,
            "base_ema": copy(base),
            # The fine-tuned policy starts as the base flow (QAM fine-tunes from the behaviour flow).
            "policy": copy(base),
        }
        opt_state = {name: self.tx.init(params[name]) for name in ("critic", "value", "base", "policy")}
        return TrainState(step=jnp.zeros((), jnp.int32), rng=rng, params=params, opt_state=opt_state)

    def to_bytes(self, state: TrainState) -> bytes:
        return serialization.to_bytes(state)

    def from_bytes(self, data: bytes) -> TrainState:
        try:
            return serialization.from_bytes(self.template(), data)
        except ValueError as error:
            raise ValueError(f"the train state does not fit this learner's networks (written by a version with "
                             f"another network layout?): {error}") from error

    def template(self) -> TrainState:
        """The state's structure, shapes and dtypes without computing it (restoring a checkpoint
        needs no initialisation: eager init costs seconds at the reference size)."""
        return jax.eval_shape(lambda: self.init(0))

    # -- public API --------------------------------------------------------------------------------
    def update(
        self, state: TrainState, batch: dict[str, np.ndarray], phase: Phase = "train"
    ) -> tuple[TrainState, dict[str, float]]:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
        device_batch = {key: jnp.asarray(batch[key]) for key in BATCH_KEYS}
        state, metrics = self._update(state, device_batch, phase=phase)
        return state, metrics

    def update_many(
        self, state: TrainState, batches: dict[str, np.ndarray], phase: Phase = "train"
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """``len(batches[key])`` updates fused in one jitted scan (``batches``: each key stacked on a
        leading axis); metrics per update, stacked. ``state`` is donated: use only the returned one."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
        return self._update_many(state, {key: jnp.asarray(batches[key]) for key in BATCH_KEYS}, phase=phase)

    def start_from_pretrained(self, state: TrainState, pretrained_flow: Any) -> TrainState:
        """Base, its EMA copy and the policy all become the pretrained flow (fresh optimiser states for
        them): every method fine-tunes from the same pretrained policy."""
        copy = partial(jax.tree_util.tree_map, jnp.copy)
        params = {**state.params, "base": copy(pretrained_flow), "base_ema": copy(pretrained_flow),
                  "policy": copy(pretrained_flow)}
        opt_state = {**state.opt_state, "base": self.tx.init(pretrained_flow), "policy": self.tx.init(pretrained_flow)}
        return state.replace(params=params, opt_state=opt_state)

    def acting_params(self, state: TrainState) -> dict[str, Any]:
        """What a robot needs to act (the released ``policy.msgpack``): the fine-tuned flow, plus the
        target critic when actions are picked best-of-N by Q (LWD with ``best_of_n`` > 1)."""
        params = {"policy": state.params["policy"]}
        if self.picks_by_critic:
            params["critic"] = state.params["target_critic"]
        return params

    @property
    def picks_by_critic(self) -> bool:
        return self.agent.picks_by_critic(self.spec)

    def act(self, acting_params: dict[str, Any], obs: np.ndarray, tokens: np.ndarray, rng: jax.Array) -> np.ndarray:
        """Sample action chunks (B, chunk, action_dim) in [-1, 1] from the fine-tuned policy (best of N
        samples by the critic's mean Q where configured, as the QAM reference's ``best_of_n``)."""
        return np.asarray(self._act(acting_params, jnp.asarray(obs), jnp.asarray(tokens), rng))

    def value_statistics(self, state: TrainState, obs: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self._value_stats(state.params["value"], jnp.asarray(obs), jnp.asarray(tokens)).items()}

    def velocity(self, params, obs, tokens, condition=None):
        """The velocity field v(x, t) of flow parameters ``params`` for these observations."""
        context = self.flow.apply(params, obs, tokens, condition, method=FlowPolicy.context)  # once, not per step
        return lambda x, t: self.flow.apply(params, context, x, t, method=FlowPolicy.velocity_at)

    # -- jitted internals --------------------------------------------------------------------------
    def _act_impl(self, acting_params, obs, tokens, rng):
        condition = None
        if self.agent.acting_condition() is not None:
            condition = jnp.full(obs.shape[:1], self.agent.acting_condition(), jnp.int32)
        samples = self.spec.best_of_n if self.picks_by_critic else 1
        rows = obs.shape[0]
        obs_n, tokens_n = jnp.repeat(obs, samples, axis=0), jnp.repeat(tokens, samples, axis=0)
        if condition is not None:
            condition = jnp.repeat(condition, samples, axis=0)
        noise = jax.random.normal(rng, (rows * samples, self.flat_action_dim))
        velocity = self.velocity(acting_params["policy"], obs_n, tokens_n, condition)
        actions = jnp.clip(euler_sample(velocity, noise, self.spec.flow_steps), -1.0, 1.0)
        if samples > 1:
            q = self.critic.apply(acting_params["critic"], obs_n, tokens_n, actions).mean(0).reshape(rows, samples)
            actions = actions.reshape(rows, samples, -1)[jnp.arange(rows), jnp.argmax(q, axis=1)]
        return actions.reshape(rows, self.spec.chunk, self.spec.action_dim)

    def _value_stats_impl(self, value_params, obs, tokens):
        out = self.value.apply(value_params, obs, tokens)
        if self.value.size == 1:
            return {"value": out[..., 0]}
        probs, h_norm = divl.value_statistics(out, self.value_rep, self.atoms)
        boot, tau, _ = divl.bootstrap_value(
            out, self.value_rep, self.atoms, self.spec.tau_min, self.spec.tau_max, self.spec.tau_direction
        )
        return {"mean": (probs * self.atoms).sum(-1), "entropy": h_norm, "tau": tau, "bootstrap": boot}

    def _step(self, name, params, opt_state, grads):
        updates, new_opt = self.tx.update(grads, opt_state[name], params[name])
        return optax.apply_updates(params[name], updates), new_opt

    def _update_many_impl(self, state: TrainState, batches: dict[str, jax.Array], phase: Phase = "train"):
        return jax.lax.scan(lambda carry, batch: self._update_impl(carry, batch, phase), state, batches)

    def _update_impl(self, state: TrainState, batch: dict[str, jax.Array], phase: Phase = "train"):
        rng, *keys = jax.random.split(state.rng, 1 + len(UPDATE_KEYS))
        ctx = UpdateContext(params=dict(state.params), opt_state=dict(state.opt_state),
                            keys=dict(zip(UPDATE_KEYS, keys, strict=True)), step_fn=self._step)
        if phase == "pretrain":
            obs, tokens, actions = batch["obs"], batch["tokens"], batch["actions"]

            def pretrain_loss(p):
                loss = flow_matching_loss(self.velocity(p, obs, tokens), actions, ctx.keys["base"])
                return loss, {"pretrain_flow_loss": loss}

            ctx.apply("base", pretrain_loss)
        else:
            self.agent.update(self, ctx, batch, phase)
        return TrainState(step=state.step + 1, rng=rng, params=ctx.params, opt_state=ctx.opt_state), ctx.metrics


BATCH_KEYS = ("obs", "tokens", "actions", "reward", "discount", "next_obs", "mc_return", "condition", "demo",
              "intervention")
