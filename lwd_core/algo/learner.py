"""The learner: the jit/scan/serialisation shell every method shares.

It owns the flow policy all methods share (the base flow, its EMA copy and the fine-tuned policy), the
optimiser, the jitted update and its ``lax.scan`` form, acting and the train state's bytes. The method
itself (its config, its added networks, losses, data selection, stage plan and acting) is an agent in
:mod:`lwd_core.algo.agents` (``lwd``, ``bc``, ``hgdagger``, ``recap``), named by ``spec.method``.

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
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, struct

from lwd_core.algo.agents import AgentConfig, Shell, UpdateContext, agent_config, get_agent
from lwd_core.algo.agents.base import Phase
from lwd_core.algo.flow import flow_matching_loss
from lwd_core.algo.policy import FlowPolicy
from lwd_core.algo.text import MAX_TOKENS, VOCAB_SIZE
from lwd_core.config import AlgoConfig

PHASES: tuple[str, ...] = get_args(Phase)
# One PRNG key per purpose in each update.
UPDATE_KEYS = ("base", "policy", "qam", "noise", "dropout")


@dataclass(frozen=True)
class LearnerSpec:
    """Everything that fixes network shapes and the update, the agent's whole config included; stored
    with every checkpoint (``spec.json``), and read back only when it names every field and no other."""

    obs_dim: int
    action_dim: int
    chunk: int
    hidden_dims: tuple[int, ...]
    flow_steps: int
    learning_rate: float
    grad_clip: float
    # Matmul dtype of the networks' hidden layers; "bfloat16" is for GPUs (parameters, optimiser,
    # LayerNorm, output layers and losses stay float32).
    compute_dtype: Literal["float32", "bfloat16"]
    method: str  # an agent name (lwd_core.algo.agents)
    agent: AgentConfig  # that agent's config
    vocab_size: int = VOCAB_SIZE
    max_tokens: int = MAX_TOKENS
    pixels: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.agent, get_agent(self.method).Config):
            raise TypeError(f"a {self.method} learner needs a {get_agent(self.method).Config.__name__}, "
                            f"not a {type(self.agent).__name__}")
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))

    @classmethod
    def from_config(cls, algo: AlgoConfig, obs_dim: int, action_dim: int, method: str) -> LearnerSpec:
        """The learner of ``method`` that ``algo`` describes (its agent's settings: ``algo.agents``)."""
        return cls(obs_dim=obs_dim, action_dim=action_dim, chunk=algo.action_chunk, hidden_dims=tuple(algo.hidden_dims),
                   flow_steps=algo.flow_steps, learning_rate=algo.learning_rate, grad_clip=algo.grad_clip,
                   compute_dtype=algo.compute_dtype, method=method,
                   agent=agent_config(method, algo.agents.get(method, {})))

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "agent": self.agent.model_dump(mode="json")}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LearnerSpec:
        values = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        _same_fields("spec.json", set(values), names)
        agent = get_agent(values["method"]).Config
        _same_fields(f"spec.json's {values['method']} agent", set(values["agent"]), set(agent.model_fields))
        return cls(**{**values, "agent": agent_config(values["method"], values["agent"])})


def _same_fields(what: str, found: set[str], expected: set[str]) -> None:
    if found != expected:
        missing, unknown = sorted(expected - found), sorted(found - expected)
        raise ValueError(f"{what} does not fit this version's learner: missing {missing or 'none'}, unknown "
                         f"{unknown or 'none'} (written by another version? retrain, or load it with that version)")


@struct.dataclass
class TrainState:
    step: jax.Array
    rng: jax.Array
    params: dict[str, Any]
    opt_state: dict[str, Any]


class Learner:
    def __init__(self, spec: LearnerSpec):
        self.spec = spec
        dtype = jnp.dtype(spec.compute_dtype)
        self.flow = FlowPolicy(spec.chunk, spec.action_dim, spec.hidden_dims, spec.vocab_size, spec.pixels, dtype=dtype)
        self.shell = Shell(self.flow, spec.hidden_dims, spec.vocab_size, spec.pixels, dtype, spec.flow_steps)
        self.agent = get_agent(spec.method)(spec.agent, self.shell)
        self.tx = optax.chain(optax.clip_by_global_norm(spec.grad_clip), optax.adam(spec.learning_rate))
        self.flat_action_dim = spec.chunk * spec.action_dim
        self._update = jax.jit(self._update_impl, static_argnames="phase")
        # Several updates in one call: a lax.scan over stacked batches, the state donated, so that
        # nothing returns to the host between updates and the old state's buffers are reused.
        self._update_many = jax.jit(self._update_many_impl, static_argnames="phase", donate_argnums=0)
        self._act = jax.jit(self._act_impl)
        self._value_stats = jax.jit(self.agent.value_statistics)

    # -- state -------------------------------------------------------------------------------------
    def init(self, seed: int = 0) -> TrainState:
        rng = jax.random.PRNGKey(seed)
        rng, k_critic, k_value, k_flow = jax.random.split(rng, 4)
        obs = jnp.zeros((1, self.spec.obs_dim), jnp.float32)
        tokens = jnp.zeros((1, self.spec.max_tokens), jnp.int32)
        actions = jnp.zeros((1, self.flat_action_dim), jnp.float32)
        copy = partial(jax.tree_util.tree_map, jnp.copy)  # distinct buffers: updates may donate the state
        base = self.flow.init(k_flow, obs, tokens, actions, jnp.zeros((1,)))
        params = {
            **self.agent.init({"critic": k_critic, "value": k_value}, obs, tokens, actions),
            "base": base,
            "base_ema": copy(base),
            # The fine-tuned policy starts as the base flow (QAM fine-tunes from the behaviour flow).
            "policy": copy(base),
        }
        opt_state = {name: self.tx.init(params[name]) for name in (*self.agent.trained, "base", "policy")}
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
        """What a robot needs to act (the released ``policy.msgpack``; the agent says what)."""
        return self.agent.acting_params(state.params)

    def act(self, acting_params: dict[str, Any], obs: np.ndarray, tokens: np.ndarray, rng: jax.Array) -> np.ndarray:
        """Sample action chunks (B, chunk, action_dim) in [-1, 1] as the agent acts."""
        return np.asarray(self._act(acting_params, jnp.asarray(obs), jnp.asarray(tokens), rng))

    def value_statistics(self, state: TrainState, obs: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """The agent's value model on these states (empty for a method without one)."""
        stats = self._value_stats(state.params, jnp.asarray(obs), jnp.asarray(tokens))
        return {key: np.asarray(value) for key, value in stats.items()}

    # -- jitted internals --------------------------------------------------------------------------
    def _act_impl(self, acting_params, obs, tokens, rng):
        return self.agent.act(acting_params, obs, tokens, rng).reshape(obs.shape[0], self.spec.chunk,
                                                                       self.spec.action_dim)

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
                loss = flow_matching_loss(self.shell.velocity(p, obs, tokens), actions, ctx.keys["base"])
                return loss, {"pretrain_flow_loss": loss}

            ctx.apply("base", pretrain_loss)
        else:
            self.agent.update(ctx, batch, phase)
        return TrainState(step=state.step + 1, rng=rng, params=ctx.params, opt_state=ctx.opt_state), ctx.metrics


BATCH_KEYS = ("obs", "tokens", "actions", "reward", "discount", "next_obs", "mc_return", "condition", "demo",
              "intervention")
