r"""QAM: Q-learning via Adjoint Matching, the policy-extraction step for a flow policy.

Sources: Q-learning with Adjoint Matching (Li & Levine, arXiv 2601.14234; reference code
ColinQiyangLi/qam, agents/qam.py) and Adjoint Matching (Domingo-Enrich et al., arXiv 2409.08861).
Equations as implemented here (schedule t_k, s_k, sigma_k and h = 1/K as in ``flow.py``):

Target policy (behaviour-regularised):  pi*(a|s) \propto pi_beta(a|s) exp(beta Q(s, a)).

Fine-tuning as stochastic optimal control of the memoryless SDE:
    dX = [b_base(X, t) + sigma(t) u(X, t)] dt + sigma(t) dB,    u = 2 (v_theta - v_base) / sigma,
    cost  E[ int 1/2 ||u||^2 dt - beta Q(s, X_1) ],
whose optimum has exactly the terminal law pi*.

1. Forward (stop-gradient): X_0 ~ N(0, I); Euler-Maruyama steps 0..K-2 with the *fine-tuned* flow, then
   the last step as a deterministic Euler step of the *base* flow (the reference's choice, after the
   Adjoint Matching paper).
2. Terminal adjoint: a_K = -beta * grad_a Q(s, clip(X_K)) with the gradient taken *through* the clip, so
   it is zero in any coordinate outside [-1, 1] (the reference's ``clip_adj``): pushing an action that is
   already past the bound further out cannot raise Q.
3. Lean adjoint backward along the base chain only:  a_k = (I + h J_k)^T a_{k+1},  J_k the Jacobian in x of
   the base step's drift at X_k (2 v_base - x / s_k; v_base on the deterministic last step). This is the
   exact discrete adjoint of the forward chain with the base flow, so nothing is backpropagated through
   the sampling chain.
4. Local regression on *all* K steps, the last included, because acting integrates the fine-tuned
   velocity on all K steps:
       L = sum_k || 2 (v_theta(X_k, t_k) - v_base(X_k, t_k)) / sigma_k + sigma_k a_{k+1} ||^2.
   Pairing: step k's control moves X_{k+1}, so the first-order optimum of the discrete problem is
   u_k = -sigma_k a_{k+1}. The reference pairs step k with a_k = (I + h J_k)^T a_{k+1} instead; the two
   differ by one O(h) Jacobian factor and agree as h -> 0.

What beta means: our ``beta`` (``qam_beta``) is the reference's ``inv_temp`` (default 0.3 there; OGBench
sweeps 1 for cube-double, 3 for cube-triple). At the optimum v_theta = v_base - (sigma_k^2 / 2) a_{k+1},
the same tilt as the reference's up to the one-step pairing shift above, so a beta tuned for the
reference carries over to first order in h.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from lwd_core.algo.flow import (
    Velocity,
    memoryless_drift,
    memoryless_sample,
    memoryless_schedule,
)

# Maps a batch of actions (B, D) to per-sample Q values (B,), critic parameters already bound.
ActionValue = Callable[[jax.Array], jax.Array]


def terminal_adjoint(q_value: ActionValue, final: jax.Array, beta: float, action_clip: float = 1.0) -> jax.Array:
    """-beta * d/dx Q(clip(x)) at the sampled actions: zero where a coordinate is clipped."""
    return -beta * jax.grad(lambda x: q_value(jnp.clip(x, -action_clip, action_clip)).sum())(final)


def lean_adjoint(
    base_velocity: Velocity, states: jax.Array, terminal: jax.Array, steps: int
) -> tuple[jax.Array, jax.Array]:
    """Integrate a_k = (I + h J_k)^T a_{k+1} backward. ``states``: (K+1, B, D). Returns a_0..a_K and the
    base velocities v_base(X_k, t_k), k = 0..K-1, that the backward pass evaluated on its way (the
    regression needs exactly these, so they are not computed twice)."""
    t_grid, s_grid, _ = memoryless_schedule(steps)
    h = 1.0 / steps

    def back(a_next, inputs):
        x, t, s, k = inputs

        def drift(x_):
            v = base_velocity(x_, jnp.full(x_.shape[:-1], t))
            return memoryless_drift(v, x_, s, k == steps - 1), v

        _, vjp, v = jax.vjp(drift, x, has_aux=True)
        a = a_next + h * vjp(a_next)[0]
        return a, (a, v)

    # Unrolled like the forward sampler (see flow.memoryless_sample).
    _, (adjoints, velocities) = jax.lax.scan(back, terminal, (states[:-1], t_grid, s_grid, jnp.arange(steps)),
                                             reverse=True, unroll=True)
    return jnp.concatenate([adjoints, terminal[None]], axis=0), velocities


def qam_loss(
    policy_velocity: Velocity,
    base_velocity: Velocity,
    q_value: ActionValue,
    noise: jax.Array,
    rng: jax.Array,
    steps: int,
    beta: float,
    action_clip: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Adjoint-matching loss for the fine-tuned velocity. Gradients reach only ``policy_velocity``."""

    def frozen_base(x, t):
        return jax.lax.stop_gradient(base_velocity(x, t))

    # The forward pass's fine-tuned velocities at X_0..X_{K-2} are the regression's v_theta there.
    states, final, v_theta_stochastic = memoryless_sample(policy_velocity, noise, rng, steps, frozen_base)
    terminal = jax.lax.stop_gradient(terminal_adjoint(q_value, final, beta, action_clip))
    adjoints, v_base = jax.lax.stop_gradient(lean_adjoint(base_velocity, states, terminal, steps))

    t_grid, _, sigma_grid = memoryless_schedule(steps)
    sigma = sigma_grid[:, None, None]
    v_theta_last = policy_velocity(states[-2], jnp.full(noise.shape[:-1], t_grid[-1]))
    v_theta = jnp.concatenate([v_theta_stochastic, v_theta_last[None]], axis=0)
    residual = 2.0 * (v_theta - v_base) / sigma + sigma * adjoints[1:]
    loss = jnp.sum(residual**2, axis=(0, 2)).mean()
    metrics = {
        "qam_loss": loss,
        "qam_terminal_adjoint_norm": jnp.linalg.norm(terminal, axis=-1).mean(),
        "qam_adjoint0_norm": jnp.linalg.norm(adjoints[0], axis=-1).mean(),
    }
    return loss, metrics
