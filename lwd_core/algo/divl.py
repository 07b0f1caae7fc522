"""DIVL: distributional in-sample value learning.

V_psi(s) models the *distribution* of dataset action-values {Q(s, a) : a ~ data at s}, not just a scalar
statistic of it. The critic bootstraps from an adaptive quantile of that distribution:

    y = R^{(n)} + gamma^k * mask * quantile_tau(V_psi(s')),      tau = tau(H_norm(V_psi(s')))

The LWD paper (arXiv 2605.00416) does not publish its exact loss or tau rule; our choices, all in config:

- Representation: categorical over ``bins`` atoms on [v_min, v_max] (default), fitted by cross-entropy to
  a Gaussian-smoothed histogram of the target Q (HL-Gauss, Imani & White 2018), or ``quantiles``
  values fitted by the quantile-Huber loss (Dabney et al. 2018).
- Entropy: exact for the categorical; for quantiles, the entropy of the histogram the quantiles imply
  (mass 1/N per quantile) on the same bins. Normalised by log(bins) into [0, 1].
- tau rule (linear, bounded in [tau_min, tau_max]):
      optimistic_when_narrow:  tau = tau_min + (tau_max - tau_min) * (1 - H_norm)     (default)
      optimistic_when_wide:    tau = tau_min + (tau_max - tau_min) * H_norm
  The narrow rule trusts high quantiles only where the data's action-values agree (low entropy) and
  falls back toward the median where they are spread, which guards against overestimating from a few
  lucky actions on sparse, heterogeneous multi-task data. With tau_min = tau_max it is a fixed quantile
  (tau = 0.5: median in-sample value; tau -> 1: approaches in-sample max, like IQL's expectile -> 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from pydantic import Field, model_validator

from lwd_core.algo.agents.base import AgentConfig, Shell
from lwd_core.algo.networks import MLP, Observer

Representation = Literal["categorical", "quantile"]
TauDirection = Literal["optimistic_when_narrow", "optimistic_when_wide"]


class DistributionalValue(nn.Module):
    """V_psi(s): logits over atoms (categorical) or sorted-free quantile values (quantile)."""

    representation: Representation
    size: int
    hidden_dims: Sequence[int]
    vocab_size: int
    pixels: bool = False
    dtype: Any = jnp.float32  # the hidden layers' matmul dtype (MLP)

    @nn.compact
    def __call__(self, obs: jax.Array, tokens: jax.Array) -> jax.Array:
        features = Observer(self.vocab_size, self.hidden_dims[0], pixels=self.pixels, encode_state=False)(obs, tokens)
        return MLP(self.hidden_dims, self.size, dtype=self.dtype)(features)


class ValueDistributionConfig(AgentConfig):
    """The settings of a distributional value (the agents that learn one extend this)."""

    # Categorical atoms (or quantiles) over [value_min, value_max]. The range fits the sparse reward
    # (-1 per step, 0 at success): returns lie in [-1/(1-gamma), 0].
    value_representation: Representation = "categorical"
    value_size: int = Field(default=51, ge=2)
    value_min: float = -100.0
    value_max: float = 0.0
    # Quantile-Huber zone for the quantile representation; its fixed points are exact quantiles as it -> 0.
    value_huber_kappa: float = Field(default=1.0, gt=0.0)

    @model_validator(mode="after")
    def _range_ordered(self) -> ValueDistributionConfig:
        if self.value_min >= self.value_max:
            raise ValueError("value_min must be below value_max")
        return self

    def network(self, shell: Shell, size: int | None = None) -> DistributionalValue:
        """The value network for these settings (``size`` 1 with ``quantile``: a scalar value)."""
        return DistributionalValue(self.value_representation if size is None else "quantile",
                                   self.value_size if size is None else size, shell.hidden_dims, shell.vocab_size,
                                   shell.pixels, dtype=shell.dtype)

    def atoms(self) -> jax.Array:
        """The categorical support (computed once, outside traced code: a traced linspace rounds differently)."""
        return support(self.value_min, self.value_max, self.value_size)


def support(v_min: float, v_max: float, bins: int) -> jax.Array:
    return jnp.linspace(v_min, v_max, bins)


def hl_gauss_probs(values: jax.Array, atoms: jax.Array, sigma_bins: float = 0.75) -> jax.Array:
    """Gaussian-smoothed histogram target: mass of N(value, sigma) falling in each atom's bin."""
    width = atoms[1] - atoms[0]
    edges = jnp.concatenate([atoms - width / 2, atoms[-1:] + width / 2])
    sigma = sigma_bins * width
    clipped = jnp.clip(values, atoms[0], atoms[-1])[..., None]
    cdf = jax.scipy.stats.norm.cdf((edges - clipped) / sigma)
    mass = cdf[..., 1:] - cdf[..., :-1]
    return mass / jnp.maximum(mass.sum(-1, keepdims=True), 1e-8)


def categorical_loss(logits: jax.Array, target_values: jax.Array, atoms: jax.Array) -> jax.Array:
    target = jax.lax.stop_gradient(hl_gauss_probs(target_values, atoms))
    return -(target * jax.nn.log_softmax(logits)).sum(-1).mean()


def quantile_fractions(n: int) -> jax.Array:
    return (jnp.arange(n) + 0.5) / n


def quantile_huber_loss(quantiles: jax.Array, targets: jax.Array, kappa: float = 1.0) -> jax.Array:
    """Quantile regression (Huber, kappa) of predicted quantiles (B, N) against target samples (B,) or (B, M)."""
    if targets.ndim == quantiles.ndim - 1:
        targets = targets[..., None]
    tau = quantile_fractions(quantiles.shape[-1])
    u = targets[..., None, :] - quantiles[..., :, None]  # (B, N, M)
    abs_u = jnp.abs(u)
    huber = jnp.where(abs_u <= kappa, 0.5 * u**2, kappa * (abs_u - 0.5 * kappa)) / kappa
    weight = jnp.abs(tau[:, None] - (u < 0).astype(u.dtype))
    return (weight * huber).sum(-2).mean()


def categorical_quantile(probs: jax.Array, atoms: jax.Array, tau: jax.Array) -> jax.Array:
    """Inverse CDF of a categorical on ``atoms`` at level tau (per row), linearly interpolated."""
    cdf = jnp.cumsum(probs, axis=-1)
    tau = jnp.broadcast_to(tau, probs.shape[:-1])[..., None]
    index = jnp.clip(jnp.sum(cdf < tau, axis=-1), 0, atoms.shape[0] - 1)
    upper_cdf = jnp.take_along_axis(cdf, index[..., None], -1)[..., 0]
    lower_cdf = jnp.where(index > 0, jnp.take_along_axis(cdf, jnp.maximum(index - 1, 0)[..., None], -1)[..., 0], 0.0)
    lower_atom = atoms[jnp.maximum(index - 1, 0)]
    frac = jnp.clip((tau[..., 0] - lower_cdf) / jnp.maximum(upper_cdf - lower_cdf, 1e-8), 0.0, 1.0)
    return jnp.where(index > 0, lower_atom + frac * (atoms[index] - lower_atom), atoms[0])


def quantile_at(quantiles: jax.Array, tau: jax.Array) -> jax.Array:
    """Value at level tau from N quantile estimates at fractions (i + 0.5)/N, linearly interpolated."""
    ordered = jnp.sort(quantiles, axis=-1)
    n = ordered.shape[-1]
    tau = jnp.broadcast_to(tau, ordered.shape[:-1])
    position = jnp.clip(tau * n - 0.5, 0.0, n - 1.0)
    low = jnp.floor(position).astype(jnp.int32)
    high = jnp.minimum(low + 1, n - 1)
    frac = position - low
    pick = lambda idx: jnp.take_along_axis(ordered, idx[..., None], -1)[..., 0]  # noqa: E731
    return pick(low) * (1 - frac) + pick(high) * frac


def normalized_entropy(probs: jax.Array) -> jax.Array:
    entropy = -(probs * jnp.log(jnp.maximum(probs, 1e-12))).sum(-1)
    return entropy / jnp.log(probs.shape[-1])


def quantiles_to_probs(quantiles: jax.Array, atoms: jax.Array) -> jax.Array:
    """Histogram of N quantile values (mass 1/N each) on the atoms' bins."""
    width = atoms[1] - atoms[0]
    index = jnp.clip(jnp.round((quantiles - atoms[0]) / width).astype(jnp.int32), 0, atoms.shape[0] - 1)
    return jax.nn.one_hot(index, atoms.shape[0]).mean(-2)


def adaptive_tau(h_norm: jax.Array, tau_min: float, tau_max: float, direction: TauDirection) -> jax.Array:
    spread = h_norm if direction == "optimistic_when_wide" else 1.0 - h_norm
    return tau_min + (tau_max - tau_min) * jnp.clip(spread, 0.0, 1.0)


def value_statistics(
    output: jax.Array, representation: Representation, atoms: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(probabilities on atoms, normalised entropy) for either representation."""
    probs = jax.nn.softmax(output) if representation == "categorical" else quantiles_to_probs(output, atoms)
    return probs, normalized_entropy(probs)


def bootstrap_value(
    output: jax.Array,
    representation: Representation,
    atoms: jax.Array,
    tau_min: float,
    tau_max: float,
    direction: TauDirection,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """quantile_tau(V_psi(s')) with tau from the entropy; returns (value, tau, H_norm)."""
    probs, h_norm = value_statistics(output, representation, atoms)
    tau = adaptive_tau(h_norm, tau_min, tau_max, direction)
    if representation == "categorical":
        value = categorical_quantile(probs, atoms, tau)
    else:
        value = quantile_at(output, tau)
    return value, tau, h_norm


def value_loss(
    output: jax.Array, targets: jax.Array, representation: Representation, atoms: jax.Array, kappa: float = 1.0
) -> jax.Array:
    if representation == "categorical":
        return categorical_loss(output, targets, atoms)
    return quantile_huber_loss(output, targets, kappa)
