r"""QAM: Q-learning via Adjoint Matching, the policy-extraction step for a flow policy.

Sources: Q-learning with Adjoint Matching (Li & Levine, arXiv 2601.14234) and Adjoint Matching
(Domingo-Enrich et al., arXiv 2409.08861). Equations as implemented here:

Target policy (behaviour-regularised):  pi*(a|s) \propto pi_beta(a|s) exp(beta Q(s, a)).

Fine-tuning as stochastic optimal control of the memoryless SDE (see ``flow.py``):
    dX = [b_base(X, t) + sigma(t) u(X, t)] dt + sigma(t) dB,    u = 2 (v_theta - v_base) / sigma,
    cost  E[ int 1/2 ||u||^2 dt - beta Q(s, X_1) ],
whose optimum has exactly the terminal law pi*. With K Euler-Maruyama steps (h = 1/K):

1. Forward (stop-gradient): X_0 ~ N(0, I); X_{k+1} = X_k + h b_theta(X_k, t_k) + sqrt(h) sigma_k eps_k, using
   the *fine-tuned* flow; the last step is deterministic.
2. Terminal adjoint: a_K = -beta * grad_a Q(s, clip(X_K)), Q the (target) critic.
3. Lean adjoint backward along the *base* drift only:  a_k = (I + h J_k)^T a_{k+1},  J_k = d b_base/dx at
   (X_k, t_k). This is the exact discrete adjoint of the Euler step, so the fine-tuned flow never enters
   the backward pass and nothing is backpropagated through the sampling chain.
4. Local regression at every stochastic step k:
       L = sum_k || 2 (v_theta(X_k, t_k) - v_base(X_k, t_k)) / sigma_k + sigma_k a_{k+1} ||^2.
   We pair step k's control with a_{k+1}: u_k moves X_{k+1} by h sigma_k u_k, so the first-order optimum
   of the discrete problem is u_k = -sigma_k a_{k+1} (in continuous time a_k and a_{k+1} coincide).
   Gradients flow only through v_theta; at the optimum v_theta = v_base + (sigma_k^2 / 2) beta grad Q terms
   push samples up the critic, with strength set by beta.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from lwd_core.algo.flow import Velocity, memoryless_drift, memoryless_sample, memoryless_schedule

# Maps a batch of final actions to grad_a Q (same shape), critic parameters already bound.
ActionGradient = Callable[[jax.Array], jax.Array]


def lean_adjoint(
    base_velocity: Velocity, states: jax.Array, terminal_adjoint: jax.Array, steps: int
) -> jax.Array:
    """Integrate a_k = (I + h J_k)^T a_{k+1} backward. ``states``: (K+1, B, D). Returns a_0..a_K."""
    t_grid, s_grid, _ = memoryless_schedule(steps)
    h = 1.0 / steps

    def back(a_next, inputs):
        x, t, s, k = inputs

        def drift(x_):
            return memoryless_drift(base_velocity(x_, jnp.full(x_.shape[:-1], t)), x_, s, k == steps - 1)

        _, vjp = jax.vjp(drift, x)
        a = a_next + h * vjp(a_next)[0]
        return a, a

    _, adjoints = jax.lax.scan(
        back, terminal_adjoint, (states[:-1], t_grid, s_grid, jnp.arange(steps)), reverse=True
    )
    return jnp.concatenate([adjoints, terminal_adjoint[None]], axis=0)


def qam_loss(
    policy_velocity: Velocity,
    base_velocity: Velocity,
    action_gradient: ActionGradient,
    noise: jax.Array,
    rng: jax.Array,
    steps: int,
    beta: float,
    action_clip: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Adjoint-matching loss for the fine-tuned velocity. Gradients reach only ``policy_velocity``."""

    def frozen_policy(x, t):
        return jax.lax.stop_gradient(policy_velocity(x, t))

    states, final = memoryless_sample(frozen_policy, noise, rng, steps)
    states = jax.lax.stop_gradient(states)
    grad_q = jax.lax.stop_gradient(action_gradient(jnp.clip(final, -action_clip, action_clip)))
    adjoints = jax.lax.stop_gradient(lean_adjoint(base_velocity, states, -beta * grad_q, steps))

    t_grid, _, sigma_grid = memoryless_schedule(steps)
    stochastic = steps - 1  # the final deterministic step (sigma = 0) carries no control cost
    x_k = states[:stochastic]
    t_k = t_grid[:stochastic]
    sigma = sigma_grid[:stochastic][:, None, None]

    def both(x, t):
        tt = jnp.full(x.shape[:-1], t)
        return policy_velocity(x, tt), jax.lax.stop_gradient(base_velocity(x, tt))

    v_theta, v_base = jax.vmap(both)(x_k, t_k)
    residual = 2.0 * (v_theta - v_base) / sigma + sigma * adjoints[1 : stochastic + 1]
    loss = jnp.sum(residual**2, axis=(0, 2)).mean()
    metrics = {
        "qam_loss": loss,
        "qam_grad_q_norm": jnp.linalg.norm(grad_q, axis=-1).mean(),
        "qam_adjoint0_norm": jnp.linalg.norm(adjoints[0], axis=-1).mean(),
    }
    return loss, metrics
