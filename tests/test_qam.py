"""QAM on a 1-D bandit with an analytic critic.

Behaviour data a ~ N(0, s^2); critic Q(a) = -(a - m)^2. The KL-regularised optimum
pi*(a) ~ N(0, s^2)(a) * exp(beta Q(a)) is Gaussian with precision 1/s^2 + 2 beta and mean
2 beta m / (1/s^2 + 2 beta). QAM should land near it; BC (flow matching alone) should stay at the data.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lwd_core.algo.flow import euler_sample, flow_matching_loss, memoryless_sample, memoryless_schedule
from lwd_core.algo.networks import MLP
from lwd_core.algo.qam import lean_adjoint, qam_loss

S, M, BETA, STEPS = 0.3, 0.6, 10.0, 10
PRECISION = 1 / S**2 + 2 * BETA
OPT_MEAN, OPT_STD = 2 * BETA * M / PRECISION, PRECISION**-0.5


class Velocity(nn.Module):
    @nn.compact
    def __call__(self, x, t):
        return MLP((64, 64), 1, layer_norm=False)(jnp.concatenate([x, t[..., None]], -1))


def q_grad(a):
    return -2.0 * (a - M)


def train(loss_fn, params, steps, seed):
    tx = optax.adam(1e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, key)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    key = jax.random.PRNGKey(seed)
    for _ in range(steps):
        key, sub = jax.random.split(key)
        params, opt, _ = step(params, opt, sub)
    return params


@pytest.fixture(scope="module")
def base_params():
    net = Velocity()
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)), jnp.zeros((1,)))

    def bc(p, key):
        k_data, k_fm = jax.random.split(key)
        data = S * jax.random.normal(k_data, (256, 1))
        return flow_matching_loss(lambda x, t: net.apply(p, x, t), data, k_fm)

    return train(bc, params, 3000, seed=1)


def samples(params, n=4000, seed=7):
    net = Velocity()
    noise = jax.random.normal(jax.random.PRNGKey(seed), (n, 1))
    return np.asarray(euler_sample(lambda x, t: net.apply(params, x, t), noise, STEPS))[:, 0]


def test_bc_matches_data_not_critic(base_params):
    actions = samples(base_params)
    assert abs(actions.mean()) < 0.05
    assert abs(actions.std() - S) < 0.05


def test_qam_moves_policy_to_the_tilted_optimum(base_params):
    net = Velocity()
    base = lambda x, t: net.apply(base_params, x, t)  # noqa: E731

    def loss(p, key):
        k_noise, k_sde = jax.random.split(key)
        noise = jax.random.normal(k_noise, (256, 1))
        value, _ = qam_loss(lambda x, t: net.apply(p, x, t), base, q_grad, noise, k_sde, STEPS, BETA)
        return value

    tuned = train(loss, base_params, 2000, seed=2)
    actions = samples(tuned)
    before = samples(base_params)
    # Moved toward the critic's optimum m, and close to the analytic KL-regularised optimum.
    assert actions.mean() > before.mean() + 0.2
    assert abs(actions.mean() - OPT_MEAN) < 0.08, (actions.mean(), OPT_MEAN)
    assert actions.std() < S, (actions.std(), OPT_STD)
    assert np.mean(-(actions - M) ** 2) > np.mean(-(before - M) ** 2) + 0.1


def test_qam_gradient_vanishes_when_critic_is_flat(base_params):
    """With grad Q = 0 the base flow is already optimal: the loss and its gradient are ~0 at v_theta = v_base."""
    net = Velocity()

    def loss(p):
        value, _ = qam_loss(
            lambda x, t: net.apply(p, x, t), lambda x, t: net.apply(base_params, x, t), jnp.zeros_like,
            jax.random.normal(jax.random.PRNGKey(3), (64, 1)), jax.random.PRNGKey(4), STEPS, BETA,
        )
        return value

    value, grads = jax.value_and_grad(loss)(base_params)
    assert float(value) < 1e-10
    assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(grads)) < 1e-6


def test_lean_adjoint_is_the_discrete_adjoint_of_the_base_sde():
    """For a linear base velocity v = c x the Euler map is linear: a_0 = prod_k (1 + h b'_k) a_K."""
    c = 0.7
    velocity = lambda x, t: c * x  # noqa: E731
    states, _ = memoryless_sample(velocity, jnp.ones((1, 1)), jax.random.PRNGKey(0), STEPS)
    adjoints = lean_adjoint(velocity, states, jnp.ones((1, 1)), STEPS)
    _, s, _ = memoryless_schedule(STEPS)
    h = 1.0 / STEPS
    slopes = np.where(np.arange(STEPS) == STEPS - 1, c, 2 * c - 1 / np.asarray(s))
    expected = np.cumprod((1 + h * slopes)[::-1])[::-1]
    np.testing.assert_allclose(np.asarray(adjoints[:-1, 0, 0]), expected, rtol=1e-5)
