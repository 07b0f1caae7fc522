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
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lwd_core.algo import divl
from lwd_core.algo.agents.base import Agent, UpdateContext
from lwd_core.algo.expectile import expectile_loss
from lwd_core.algo.flow import flow_matching_loss
from lwd_core.algo.networks import pessimistic
from lwd_core.algo.qam import qam_loss


class LWD(Agent):
    name = "lwd"
    warms_up = True

    def scalar_value(self, spec: Any) -> bool:
        return spec.value_model == "expectile"

    def picks_by_critic(self, spec: Any) -> bool:
        return spec.best_of_n > 1

    def update(self, learner: Any, ctx: UpdateContext, batch: dict[str, jax.Array], phase: str) -> None:
        self.critic_and_value(learner, ctx, batch)
        if phase == "train":
            self.base_and_policy(learner, ctx, batch)

    def critic_and_value(self, learner: Any, ctx: UpdateContext, batch: dict[str, jax.Array]) -> None:
        spec, params = learner.spec, ctx.params
        obs, tokens, actions = batch["obs"], batch["tokens"], batch["actions"]
        scalar = learner.value.size == 1

        next_out = jax.lax.stop_gradient(learner.value.apply(params["value"], batch["next_obs"], tokens))
        if scalar:
            bootstrap = next_out[..., 0]
        else:
            bootstrap, tau, h_norm = divl.bootstrap_value(
                next_out, learner.value_rep, learner.atoms, spec.tau_min, spec.tau_max, spec.tau_direction
            )
            ctx.metrics["divl_tau"] = tau.mean()
            ctx.metrics["divl_entropy"] = h_norm.mean()
        target = batch["reward"] + batch["discount"] * bootstrap

        def critic_loss(p):
            q = learner.critic.apply(p, obs, tokens, actions)
            loss = jnp.mean((q - target[None]) ** 2)
            return loss, {"critic_loss": loss, "q_mean": q.mean(), "td_target_mean": target.mean()}

        ctx.apply("critic", critic_loss)

        # The distribution (or expectile) of dataset action-values under the target critic.
        q_data = jax.lax.stop_gradient(
            pessimistic(learner.critic.apply(params["target_critic"], obs, tokens, actions), spec.critic_std_weight)
        )

        def value_loss(p):
            out = learner.value.apply(p, obs, tokens)
            if scalar:
                loss = expectile_loss(q_data - out[..., 0], spec.expectile)
            else:
                loss = divl.value_loss(out, q_data, learner.value_rep, learner.atoms, spec.value_huber_kappa)
            return loss, {"value_loss": loss}

        ctx.apply("value", value_loss)
        params["target_critic"] = optax.incremental_update(params["critic"], params["target_critic"], spec.target_tau)

    def base_and_policy(self, learner: Any, ctx: UpdateContext, batch: dict[str, jax.Array]) -> None:
        spec, params = learner.spec, ctx.params
        obs, tokens, actions = batch["obs"], batch["tokens"], batch["actions"]
        human = (batch["demo"] | batch["intervention"]).astype(jnp.float32)

        def base_loss(p):
            weights = human if spec.base_data == "human" else None
            loss = flow_matching_loss(learner.velocity(p, obs, tokens), actions, ctx.keys["base"], weights=weights)
            return loss, {"base_flow_loss": loss}

        ctx.apply("base", base_loss)

        def q_value(a):
            return learner.critic.apply(params["target_critic"], obs, tokens, a).mean(0)

        noise = jax.random.normal(ctx.keys["noise"], actions.shape)

        def policy_loss(p):
            loss, aux = qam_loss(learner.velocity(p, obs, tokens), learner.velocity(params["base_ema"], obs, tokens),
                                 q_value, noise, ctx.keys["qam"], spec.flow_steps, spec.qam_beta)
            if spec.bc_weight > 0:
                # Anchor to what people did: demonstrations and intervention segments only.
                bc = flow_matching_loss(learner.velocity(p, obs, tokens), actions, ctx.keys["policy"], weights=human)
                loss = loss + spec.bc_weight * bc
                aux = {**aux, "policy_bc_loss": bc}
            return loss, aux

        ctx.apply("policy", policy_loss)
        params["base_ema"] = optax.incremental_update(params["base"], params["base_ema"], spec.target_tau)
