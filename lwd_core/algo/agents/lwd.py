"""LWD: distributional value learning (DIVL) for the critic's bootstrap, and QAM policy extraction from
the pretrained flow with a BC anchor on what people did (../shared/ALGORITHMS.md).

Per update (phase ``warmup`` stops after the value, with the policy frozen):
1. Critic Q_phi (ensemble): TD toward r + gamma^n V(s'), V from the value model at s' (in-sample: no
   policy action at s'). The value is DIVL's distribution of dataset action-values, bootstrapped at an
   entropy-dependent quantile; with ``value_model: expectile`` it is IQL's scalar expectile instead
   (the ablation).
2. Base flow v_beta: flow matching on human rows (demonstrations and interventions) by default, so
   failed rollouts and play shape the critic but not the reference QAM regularises toward.
3. Fine-tuned policy v_theta: QAM against the target critic's mean over heads, adjoint along the EMA
   base, plus ``bc_weight`` x flow matching on human rows.

Acting samples the fine-tuned flow, best of ``best_of_n`` chunks by the critic where that is above 1.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import optax
from pydantic import Field, model_validator

from lwd_core.algo import divl
from lwd_core.algo.agents.base import Agent, Params, Phase, Shell, UpdateContext
from lwd_core.algo.expectile import expectile_loss
from lwd_core.algo.flow import flow_matching_loss
from lwd_core.algo.networks import CriticEnsemble, pessimistic
from lwd_core.algo.qam import qam_loss


class LWDAgentConfig(divl.ValueDistributionConfig):
    """Defaults follow the QAM reference settings on OGBench where it has one."""

    # "divl": the distributional value; "expectile": IQL's scalar expectile (the ablation).
    value_model: Literal["divl", "expectile"] = "divl"
    # DIVL's bootstrap quantile tau from the value distribution's normalised entropy H (divl.py):
    # tau_min + (tau_max - tau_min)(1 - H) when optimistic where narrow, H instead of 1 - H otherwise.
    tau_min: float = Field(default=0.5, gt=0.0, lt=1.0)
    tau_max: float = Field(default=0.9, gt=0.0, lt=1.0)
    tau_direction: divl.TauDirection = "optimistic_when_narrow"
    # IQL's expectile, for value_model "expectile".
    expectile: float = Field(default=0.9, gt=0.0, lt=1.0)
    # Critic ensemble: heads, and the value's targets at mean - critic_std_weight * std over heads.
    critic_heads: int = Field(default=10, ge=1)
    critic_std_weight: float = Field(default=0.5, ge=0.0)
    # Polyak rate of the target critic and of the base flow's EMA copy.
    target_tau: float = Field(default=0.005, gt=0.0, le=1.0)
    # QAM inverse temperature: target policy ~ pi_beta * exp(beta * Q).
    qam_beta: float = Field(default=1.0, gt=0.0)
    # QAM's BC anchor: flow matching of the fine-tuned policy on demonstration and intervention rows only.
    bc_weight: float = Field(default=1.0, ge=0.0)
    # What the base flow (QAM's reference policy) is fitted to: "human" rows (demonstrations and
    # interventions) or "all" data (the QAM reference: the behaviour policy of the whole buffer).
    base_data: Literal["human", "all"] = "human"
    # Acting: sample this many chunks and run the one the critic rates highest (the QAM reference's
    # best_of_n; 1 = plain sampling). The release then carries the critic too.
    best_of_n: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _tau_bounds_ordered(self) -> LWDAgentConfig:
        if self.tau_min > self.tau_max:
            raise ValueError(f"tau_min ({self.tau_min}) must not exceed tau_max ({self.tau_max})")
        return self


class LWD(Agent[LWDAgentConfig]):
    name = "lwd"
    Config = LWDAgentConfig
    trained = ("critic", "value")
    warms_up = True

    def __init__(self, config: LWDAgentConfig, shell: Shell):
        super().__init__(config, shell)
        self.scalar = config.value_model == "expectile"
        self.critic = CriticEnsemble(config.critic_heads, shell.hidden_dims, shell.vocab_size, shell.pixels,
                                     dtype=shell.dtype)
        self.value = config.network(shell, size=1 if self.scalar else None)
        self.atoms = config.atoms()

    def init(self, keys: dict[str, jax.Array], obs: jax.Array, tokens: jax.Array, actions: jax.Array) -> Params:
        critic = self.critic.init(keys["critic"], obs, tokens, actions)
        return {"critic": critic, "target_critic": jax.tree_util.tree_map(jnp.copy, critic),
                "value": self.value.init(keys["value"], obs, tokens)}

    # -- losses ------------------------------------------------------------------------------------
    def update(self, ctx: UpdateContext, batch: dict[str, jax.Array], phase: Phase) -> None:
        self.critic_and_value(ctx, batch)
        if phase == "train":
            self.base_and_policy(ctx, batch)

    def critic_and_value(self, ctx: UpdateContext, batch: dict[str, jax.Array]) -> None:
        config, params = self.config, ctx.params
        obs, tokens, actions = batch["obs"], batch["tokens"], batch["actions"]

        next_out = jax.lax.stop_gradient(self.value.apply(params["value"], batch["next_obs"], tokens))
        if self.scalar:
            bootstrap = next_out[..., 0]
        else:
            bootstrap, tau, h_norm = divl.bootstrap_value(next_out, config.value_representation, self.atoms,
                                                          config.tau_min, config.tau_max, config.tau_direction)
            ctx.metrics["divl_tau"] = tau.mean()
            ctx.metrics["divl_entropy"] = h_norm.mean()
        target = batch["reward"] + batch["discount"] * bootstrap

        def critic_loss(p):
            q = self.critic.apply(p, obs, tokens, actions)
            loss = jnp.mean((q - target[None]) ** 2)
            return loss, {"critic_loss": loss, "q_mean": q.mean(), "td_target_mean": target.mean()}

        ctx.apply("critic", critic_loss)

        # The distribution (or expectile) of dataset action-values under the target critic.
        q_data = jax.lax.stop_gradient(
            pessimistic(self.critic.apply(params["target_critic"], obs, tokens, actions), config.critic_std_weight))

        def value_loss(p):
            out = self.value.apply(p, obs, tokens)
            if self.scalar:
                loss = expectile_loss(q_data - out[..., 0], config.expectile)
            else:
                loss = divl.value_loss(out, q_data, config.value_representation, self.atoms,
                                       config.value_huber_kappa)
            return loss, {"value_loss": loss}

        ctx.apply("value", value_loss)
        params["target_critic"] = optax.incremental_update(params["critic"], params["target_critic"], config.target_tau)

    def base_and_policy(self, ctx: UpdateContext, batch: dict[str, jax.Array]) -> None:
        config, params, velocity = self.config, ctx.params, self.shell.velocity
        obs, tokens, actions = batch["obs"], batch["tokens"], batch["actions"]
        human = (batch["demo"] | batch["intervention"]).astype(jnp.float32)

        def base_loss(p):
            weights = human if config.base_data == "human" else None
            loss = flow_matching_loss(velocity(p, obs, tokens), actions, ctx.keys["base"], weights=weights)
            return loss, {"base_flow_loss": loss}

        ctx.apply("base", base_loss)

        def q_value(a):
            return self.critic.apply(params["target_critic"], obs, tokens, a).mean(0)

        noise = jax.random.normal(ctx.keys["noise"], actions.shape)

        def policy_loss(p):
            loss, aux = qam_loss(velocity(p, obs, tokens), velocity(params["base_ema"], obs, tokens), q_value, noise,
                                 ctx.keys["qam"], self.shell.flow_steps, config.qam_beta)
            if config.bc_weight > 0:
                # Anchor to what people did: demonstrations and intervention segments only.
                bc = flow_matching_loss(velocity(p, obs, tokens), actions, ctx.keys["policy"], weights=human)
                loss = loss + config.bc_weight * bc
                aux = {**aux, "policy_bc_loss": bc}
            return loss, aux

        ctx.apply("policy", policy_loss)
        params["base_ema"] = optax.incremental_update(params["base"], params["base_ema"], config.target_tau)

    # -- acting ------------------------------------------------------------------------------------
    @property
    def picks_by_critic(self) -> bool:
        return self.config.best_of_n > 1

    def acting_params(self, params: Params) -> Params:
        """The fine-tuned flow, plus the target critic when actions are picked best-of-N by Q."""
        acting = super().acting_params(params)
        if self.picks_by_critic:
            acting["critic"] = params["target_critic"]
        return acting

    def acting_noise_shape(self, rows: int) -> tuple[int, ...]:
        return (rows * self.config.best_of_n, self.shell.flat_action_dim)

    def act_from_noise(self, acting_params: Params, obs: jax.Array, tokens: jax.Array, noise: jax.Array) -> jax.Array:
        """Best of ``best_of_n`` sampled chunks by the critic's mean Q, as the QAM reference's ``best_of_n``."""
        if not self.picks_by_critic:
            return super().act_from_noise(acting_params, obs, tokens, noise)
        rows, samples = obs.shape[0], self.config.best_of_n
        repeat = partial(jnp.repeat, repeats=samples, axis=0)
        obs_n, tokens_n = repeat(obs), repeat(tokens)
        actions = self.shell.sample(acting_params["policy"], obs_n, tokens_n, noise)
        q = self.critic.apply(acting_params["critic"], obs_n, tokens_n, actions).mean(0).reshape(rows, samples)
        return actions.reshape(rows, samples, -1)[jnp.arange(rows), jnp.argmax(q, axis=1)]

    def value_statistics(self, params: Params, obs: jax.Array, tokens: jax.Array) -> dict[str, jax.Array]:
        out = self.value.apply(params["value"], obs, tokens)
        if self.scalar:
            return {"value": out[..., 0]}
        config = self.config
        probs, h_norm = divl.value_statistics(out, config.value_representation, self.atoms)
        boot, tau, _ = divl.bootstrap_value(out, config.value_representation, self.atoms, config.tau_min,
                                            config.tau_max, config.tau_direction)
        return {"mean": (probs * self.atoms).sum(-1), "entropy": h_norm, "tau": tau, "bootstrap": boot, "probs": probs}
