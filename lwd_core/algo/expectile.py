"""IQL's scalar expectile value (Kostrikov et al. 2021): the ablation baseline for DIVL.

    L_V = E[ |tau - 1(u < 0)| u^2 ],  u = Q_target(s, a) - V(s),    critic target r + gamma^k mask V(s')
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def expectile_loss(diff: jax.Array, expectile: float) -> jax.Array:
    weight = jnp.where(diff > 0, expectile, 1.0 - expectile)
    return (weight * diff**2).mean()
