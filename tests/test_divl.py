from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lwd_core.algo import divl


def fit(loss_fn, init, steps=3000, lr=0.05):
    tx = optax.adam(lr)
    params, opt = init, tx.init(init)

    @jax.jit
    def step(params, opt):
        grads = jax.grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    for _ in range(steps):
        params, opt = step(params, opt)
    return params


def test_quantile_loss_recovers_known_quantiles():
    rng = np.random.default_rng(0)
    data = jnp.asarray(rng.exponential(2.0, size=4000) - 3.0)  # skewed, so mean != median
    n = 9
    expected = np.quantile(np.asarray(data), np.asarray(divl.quantile_fractions(n)))
    fitted = fit(lambda q: divl.quantile_huber_loss(q[None], data[None], kappa=0.01), jnp.zeros(n), lr=0.02)
    np.testing.assert_allclose(np.asarray(fitted), expected, atol=0.1)
    # A wide Huber zone trades exactness for smoothness: its fixed points are Huber quantiles, pulled
    # toward the centre; this is why kappa is a setting scaled to the value range.
    smooth = fit(lambda q: divl.quantile_huber_loss(q[None], data[None], kappa=1.0), jnp.zeros(n))
    assert np.abs(np.asarray(smooth) - expected).max() > 0.2


def test_categorical_fit_recovers_distribution():
    rng = np.random.default_rng(1)
    data = jnp.asarray(rng.normal(-30.0, 8.0, size=4000))
    atoms = divl.support(-100.0, 0.0, 101)
    logits = fit(lambda lg: divl.categorical_loss(jnp.broadcast_to(lg, (len(data), 101)), data, atoms), jnp.zeros(101))
    probs = jax.nn.softmax(logits)
    assert abs(float((probs * atoms).sum()) + 30.0) < 1.0
    for tau in (0.1, 0.5, 0.9):
        got = float(divl.categorical_quantile(probs, atoms, jnp.asarray(tau)))
        assert abs(got - np.quantile(np.asarray(data), tau)) < 1.5, tau


def test_categorical_quantile_exact_on_point_masses():
    atoms = jnp.asarray([0.0, 1.0, 2.0, 3.0])
    probs = jnp.asarray([[0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    low = divl.categorical_quantile(probs, atoms, jnp.asarray([0.01, 0.25]))
    high = divl.categorical_quantile(probs, atoms, jnp.asarray([0.99, 1.0]))
    assert float(low[0]) == pytest.approx(1.01, abs=1e-5)  # interpolates into the mass at 2
    assert float(high[0]) == pytest.approx(1.99, abs=1e-5)
    assert float(low[1]) == pytest.approx(0.0, abs=1e-5) and float(high[1]) == pytest.approx(3.0, abs=1e-5)
    # Monotone in tau.
    taus = jnp.linspace(0.01, 0.99, 50)
    values = jax.vmap(lambda t: divl.categorical_quantile(probs[1], atoms, t))(taus)
    assert bool(jnp.all(jnp.diff(values) >= -1e-6))


def test_quantile_at_interpolates_between_fractions():
    q = jnp.asarray([[0.0, 10.0]])  # at fractions 0.25 and 0.75
    assert float(divl.quantile_at(q, jnp.asarray(0.5))[0]) == pytest.approx(5.0)
    assert float(divl.quantile_at(q, jnp.asarray(0.1))[0]) == pytest.approx(0.0)
    assert float(divl.quantile_at(q, jnp.asarray(0.75))[0]) == pytest.approx(10.0)


def test_entropy_orders_narrow_below_wide_and_tau_follows_direction():
    atoms = divl.support(-100.0, 0.0, 51)
    narrow = divl.hl_gauss_probs(jnp.asarray([-20.0]), atoms, sigma_bins=0.75)
    wide = jnp.full((1, 51), 1 / 51)
    h_narrow, h_wide = divl.normalized_entropy(narrow), divl.normalized_entropy(wide)
    assert 0.0 <= float(h_narrow[0]) < 0.4 and float(h_wide[0]) == pytest.approx(1.0, abs=1e-5)
    tau = lambda h, d: float(divl.adaptive_tau(h, 0.5, 0.9, d)[0])  # noqa: E731
    assert tau(h_narrow, "optimistic_when_narrow") > tau(h_wide, "optimistic_when_narrow")
    assert tau(h_wide, "optimistic_when_narrow") == pytest.approx(0.5)
    assert tau(h_narrow, "optimistic_when_wide") < tau(h_wide, "optimistic_when_wide") == pytest.approx(0.9)
    # Bounds hold whatever the entropy.
    for h in (-1.0, 0.0, 0.5, 1.0, 2.0):
        t = float(divl.adaptive_tau(jnp.asarray(h), 0.55, 0.8, "optimistic_when_narrow"))
        assert 0.55 - 1e-6 <= t <= 0.8 + 1e-6


def test_quantile_representation_entropy_uses_histogram():
    atoms = divl.support(-10.0, 0.0, 11)
    same = jnp.full((1, 8), -5.0)
    spread = jnp.linspace(-10.0, 0.0, 8)[None]
    _, h_same = divl.value_statistics(same, "quantile", atoms)
    _, h_spread = divl.value_statistics(spread, "quantile", atoms)
    assert float(h_same[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(h_spread[0]) > 0.8


def test_bootstrap_value_narrow_distribution_bootstraps_high_quantile():
    atoms = divl.support(-100.0, 0.0, 51)
    logits = jnp.log(divl.hl_gauss_probs(jnp.asarray([-40.0]), atoms) + 1e-12)
    value, tau, _ = divl.bootstrap_value(logits, "categorical", atoms, 0.5, 0.9, "optimistic_when_narrow")
    median = divl.categorical_quantile(jax.nn.softmax(logits), atoms, jnp.asarray(0.5))
    assert float(tau[0]) > 0.7 and float(value[0]) > float(median[0])
