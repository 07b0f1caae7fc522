"""The learner: one jitted update for critic, value and policy, for LWD and every baseline.

Methods on the same networks and update:
- ``lwd``: critic Q_phi (ensemble) bootstrapping from the value model (DIVL, or IQL's expectile when
  ``value_model="expectile"``); base flow v_beta by flow matching on data (EMA copy for the adjoint);
  fine-tuned policy v_theta by QAM (+ optional BC term).
- ``bc``: flow matching on all data. ``hgdagger``: the same update; the caller feeds intervention data only.
- ``recap``: distributional value over Monte-Carlo returns plus a policy conditioned on an
  advantage token (dropped at random so the unconditioned policy is learned too); acts with "positive".

Phases (the paper's staging; ``update(state, batch, phase)``):
- ``pretrain``: flow matching of the base flow on demonstrations, the stand-in for the pretrained VLA;
  :meth:`Learner.start_from_pretrained` then makes it every method's starting policy.
- ``warmup``: critic and value (RECAP: value) only, the policy frozen, so QAM starts from a critic that
  has seen the data instead of a random one.
- ``train``: the method's full update (LWD: critic, value, base, and QAM extraction with a BC term on
  demonstrations and intervention segments).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, struct

from lwd_core.algo import divl
from lwd_core.algo.expectile import expectile_loss
from lwd_core.algo.flow import euler_sample, flow_matching_loss
from lwd_core.algo.networks import CriticEnsemble, pessimistic
from lwd_core.algo.policy import FlowPolicy
from lwd_core.algo.qam import qam_loss
from lwd_core.algo.text import MAX_TOKENS, VOCAB_SIZE

Method = Literal["lwd", "bc", "hgdagger", "recap"]
METHODS: tuple[str, ...] = ("lwd", "bc", "hgdagger", "recap")
Phase = Literal["pretrain", "warmup", "train"]
PHASES: tuple[str, ...] = ("pretrain", "warmup", "train")
CONDITION_POSITIVE = 2
CONDITION_NEGATIVE = 1


@dataclass(frozen=True)
class LearnerSpec:
    """Everything that fixes network shapes and the update; stored with every checkpoint."""

    obs_dim: int
    action_dim: int
    chunk: int = 5
    method: Method = "lwd"
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
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))

    @classmethod
    def from_config(cls, algo: Any, obs_dim: int, action_dim: int, method: Method = "lwd", **overrides: Any) -> LearnerSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {name: getattr(algo, name) for name in names if hasattr(algo, name)}
        values.update(
            chunk=algo.action_chunk,
            value_model=algo.value_model,
            hidden_dims=tuple(algo.hidden_dims),
            obs_dim=obs_dim,
            action_dim=action_dim,
            method=method,
        )
        values.update(overrides)
        return cls(**values)

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
        hidden = spec.hidden_dims
        self.critic = CriticEnsemble(spec.critic_heads, hidden, spec.vocab_size, spec.pixels)
        scalar = spec.method == "lwd" and spec.value_model == "expectile"
        self.value_rep = "quantile" if scalar else spec.value_representation
        self.value = divl.DistributionalValue(
            self.value_rep, 1 if scalar else spec.value_size, hidden, spec.vocab_size, spec.pixels
        )
        self.flow = FlowPolicy(spec.chunk, spec.action_dim, hidden, spec.vocab_size, spec.pixels)
        self.atoms = divl.support(spec.value_min, spec.value_max, spec.value_size)
        self.tx = optax.chain(optax.clip_by_global_norm(spec.grad_clip), optax.adam(spec.learning_rate))
        self.flat_action_dim = spec.chunk * spec.action_dim
        self._update = jax.jit(self._update_impl, static_argnames="phase")
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
        value = self.value.init(k_value, obs, tokens)
        base = self.flow.init(k_flow, obs, tokens, actions, jnp.zeros((1,)))
        params = {
            "critic": critic,
            "target_critic": critic,
            "value": value,
            "base": base,
            "base_ema": base,
            # The fine-tuned policy starts as the base flow (QAM fine-tunes from the behaviour flow).
            "policy": base,
        }
        opt_state = {name: self.tx.init(params[name]) for name in ("critic", "value", "base", "policy")}
        return TrainState(step=jnp.zeros((), jnp.int32), rng=rng, params=params, opt_state=opt_state)

    def to_bytes(self, state: TrainState) -> bytes:
        return serialization.to_bytes(state)

    def from_bytes(self, data: bytes) -> TrainState:
        return serialization.from_bytes(self.init(0), data)

    # -- public API --------------------------------------------------------------------------------
    def update(
        self, state: TrainState, batch: dict[str, np.ndarray], phase: Phase = "train"
    ) -> tuple[TrainState, dict[str, float]]:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
        device_batch = {key: jnp.asarray(batch[key]) for key in BATCH_KEYS}
        state, metrics = self._update(state, device_batch, phase=phase)
        return state, metrics

    def start_from_pretrained(self, state: TrainState, pretrained_flow: Any) -> TrainState:
        """Base, its EMA copy and the policy all become the pretrained flow (fresh optimiser states for
        them): every method fine-tunes from the same pretrained policy."""
        params = {**state.params, "base": pretrained_flow, "base_ema": pretrained_flow, "policy": pretrained_flow}
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
        return self.spec.method == "lwd" and self.spec.best_of_n > 1

    def act(self, acting_params: dict[str, Any], obs: np.ndarray, tokens: np.ndarray, rng: jax.Array) -> np.ndarray:
        """Sample action chunks (B, chunk, action_dim) in [-1, 1] from the fine-tuned policy (best of N
        samples by the critic's mean Q where configured, as the QAM reference's ``best_of_n``)."""
        return np.asarray(self._act(acting_params, jnp.asarray(obs), jnp.asarray(tokens), rng))

    def value_statistics(self, state: TrainState, obs: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self._value_stats(state.params["value"], jnp.asarray(obs), jnp.asarray(tokens)).items()}

    # -- jitted internals --------------------------------------------------------------------------
    def _velocity(self, params, obs, tokens, condition=None):
        return lambda x, t: self.flow.apply(params, obs, tokens, x, t, condition)

    def _act_impl(self, acting_params, obs, tokens, rng):
        condition = None
        if self.spec.method == "recap":
            condition = jnp.full(obs.shape[:1], CONDITION_POSITIVE, jnp.int32)
        samples = self.spec.best_of_n if self.picks_by_critic else 1
        rows = obs.shape[0]
        obs_n, tokens_n = jnp.repeat(obs, samples, axis=0), jnp.repeat(tokens, samples, axis=0)
        if condition is not None:
            condition = jnp.repeat(condition, samples, axis=0)
        noise = jax.random.normal(rng, (rows * samples, self.flat_action_dim))
        velocity = self._velocity(acting_params["policy"], obs_n, tokens_n, condition)
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

    def _update_impl(self, state: TrainState, batch: dict[str, jax.Array], phase: Phase = "train"):
        spec = self.spec
        rng, k_base, k_policy, k_qam, k_noise, k_drop = jax.random.split(state.rng, 6)
        params = dict(state.params)
        opt_state = dict(state.opt_state)
        metrics: dict[str, jax.Array] = {}
        obs, tokens, actions = batch["obs"], batch["tokens"], batch["actions"]

        def apply_grads(name, loss_fn):
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params[name])
            params[name], opt_state[name] = self._step(name, params, opt_state, grads)
            metrics.update(aux)
            return loss

        if phase == "pretrain":

            def pretrain_loss(p):
                loss = flow_matching_loss(self._velocity(p, obs, tokens), actions, k_base)
                return loss, {"pretrain_flow_loss": loss}

            apply_grads("base", pretrain_loss)
        elif spec.method == "lwd":
            self._lwd_losses(params, batch, apply_grads, metrics, k_base, k_policy, k_qam, k_noise,
                             extract=phase == "train")
        elif phase == "warmup":
            if spec.method == "recap":
                self._recap_value(params, batch, apply_grads)
        elif spec.method in ("bc", "hgdagger"):

            def bc_loss(p):
                loss = flow_matching_loss(self._velocity(p, obs, tokens), actions, k_policy)
                return loss, {"bc_loss": loss}

            apply_grads("policy", bc_loss)
        else:  # recap
            self._recap_losses(params, batch, apply_grads, k_policy, k_drop)

        new_state = TrainState(step=state.step + 1, rng=rng, params=params, opt_state=opt_state)
        return new_state, metrics

    def _lwd_losses(self, params, batch, apply_grads, metrics, k_base, k_policy, k_qam, k_noise, extract=True):
        spec = self.spec
        obs, tokens, actions = batch["obs"], batch["tokens"], batch["actions"]
        scalar = self.value.size == 1

        # Critic: bootstrap from the value model at s' (in-sample: no policy action at s').
        next_out = jax.lax.stop_gradient(self.value.apply(params["value"], batch["next_obs"], tokens))
        if scalar:
            bootstrap = next_out[..., 0]
        else:
            bootstrap, tau, h_norm = divl.bootstrap_value(
                next_out, self.value_rep, self.atoms, spec.tau_min, spec.tau_max, spec.tau_direction
            )
            metrics["divl_tau"] = tau.mean()
            metrics["divl_entropy"] = h_norm.mean()
        target = batch["reward"] + batch["discount"] * bootstrap

        def critic_loss(p):
            q = self.critic.apply(p, obs, tokens, actions)
            loss = jnp.mean((q - target[None]) ** 2)
            return loss, {"critic_loss": loss, "q_mean": q.mean(), "td_target_mean": target.mean()}

        apply_grads("critic", critic_loss)

        # Value: the distribution (or expectile) of dataset action-values under the target critic.
        q_data = jax.lax.stop_gradient(
            pessimistic(self.critic.apply(params["target_critic"], obs, tokens, actions), spec.critic_std_weight)
        )

        def value_loss(p):
            out = self.value.apply(p, obs, tokens)
            if scalar:
                loss = expectile_loss(q_data - out[..., 0], spec.expectile)
            else:
                loss = divl.value_loss(out, q_data, self.value_rep, self.atoms, spec.value_huber_kappa)
            return loss, {"value_loss": loss}

        apply_grads("value", value_loss)
        params["target_critic"] = optax.incremental_update(params["critic"], params["target_critic"], spec.target_tau)
        if not extract:
            return

        # Base flow, the reference QAM regularises toward: flow matching on human rows (demonstrations and
        # interventions) by default, so failed rollouts and play shape the critic but not the reference.
        human = (batch["demo"] | batch["intervention"]).astype(jnp.float32)

        def base_loss(p):
            weights = human if spec.base_data == "human" else None
            loss = flow_matching_loss(self._velocity(p, obs, tokens), actions, k_base, weights=weights)
            return loss, {"base_flow_loss": loss}

        apply_grads("base", base_loss)

        # Policy: QAM against the target critic (mean over heads, as the reference), adjoint along the EMA base.
        def q_value(a):
            return self.critic.apply(params["target_critic"], obs, tokens, a).mean(0)

        noise = jax.random.normal(k_noise, actions.shape)

        def policy_loss(p):
            loss, aux = qam_loss(
                self._velocity(p, obs, tokens),
                self._velocity(params["base_ema"], obs, tokens),
                q_value,
                noise,
                k_qam,
                spec.flow_steps,
                spec.qam_beta,
            )
            if spec.bc_weight > 0:
                # Anchor to what people did: demonstrations and intervention segments only.
                bc = flow_matching_loss(self._velocity(p, obs, tokens), actions, k_policy, weights=human)
                loss = loss + spec.bc_weight * bc
                aux = {**aux, "policy_bc_loss": bc}
            return loss, aux

        apply_grads("policy", policy_loss)
        params["base_ema"] = optax.incremental_update(params["base"], params["base_ema"], spec.target_tau)

    def _recap_value(self, params, batch, apply_grads):
        def value_loss(p):
            out = self.value.apply(p, batch["obs"], batch["tokens"])
            loss = divl.value_loss(out, batch["mc_return"], self.value_rep, self.atoms, self.spec.value_huber_kappa)
            return loss, {"value_loss": loss}

        apply_grads("value", value_loss)

    def _recap_losses(self, params, batch, apply_grads, k_policy, k_drop):
        spec = self.spec
        obs, tokens, actions = batch["obs"], batch["tokens"], batch["actions"]
        self._recap_value(params, batch, apply_grads)
        keep = jax.random.uniform(k_drop, batch["condition"].shape) >= spec.recap_condition_dropout
        condition = jnp.where(keep, batch["condition"], 0)

        def policy_loss(p):
            loss = flow_matching_loss(self._velocity(p, obs, tokens, condition), actions, k_policy)
            return loss, {"bc_loss": loss}

        apply_grads("policy", policy_loss)


BATCH_KEYS = ("obs", "tokens", "actions", "reward", "discount", "next_obs", "mc_return", "condition", "demo",
              "intervention")
