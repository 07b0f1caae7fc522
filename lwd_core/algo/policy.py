"""VLA-style flow-matching policy over action chunks.

    features = backbone(observation, instruction tokens)        # Observer by default; a pretrained VLA
    v_theta(x_t, t | features, condition)                        # velocity field over a flattened chunk

The action head generates a whole chunk (``chunk`` steps x ``action_dim``) at once by integrating the
velocity field from Gaussian noise (t=0) to an action chunk (t=1). ``condition`` is an optional small
integer token (0 = none) used by the advantage-conditioned RECAP baseline; other methods leave it at 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from lwd_core.algo.networks import MLP, Observer

NUM_CONDITIONS = 3  # 0: none/dropped, 1: advantage negative, 2: advantage positive


class Backbone(Protocol):
    """What the action head needs from a (possibly pretrained) vision-language backbone."""

    def __call__(self, obs: jax.Array, tokens: jax.Array) -> jax.Array: ...


class TimeEmbedding(nn.Module):
    dim: int = 32

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        freqs = jnp.exp(jnp.linspace(0.0, jnp.log(1000.0), self.dim // 2))
        angles = t[..., None] * freqs
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class FlowPolicy(nn.Module):
    """Velocity field v(x_t, t | obs, instruction, condition) for flattened action chunks."""

    chunk: int
    action_dim: int
    hidden_dims: Sequence[int]
    vocab_size: int
    pixels: bool = False
    # Any Flax module mapping (obs, tokens) -> features; None builds our Observer (state or pixels).
    backbone: Any = None

    @property
    def flat_dim(self) -> int:
        return self.chunk * self.action_dim

    @nn.compact
    def __call__(
        self, obs: jax.Array, tokens: jax.Array, x_t: jax.Array, t: jax.Array, condition: jax.Array | None = None
    ) -> jax.Array:
        backbone = self.backbone or Observer(self.vocab_size, feature_dim=self.hidden_dims[0], pixels=self.pixels)
        features = backbone(obs, tokens)
        if condition is None:
            condition = jnp.zeros(x_t.shape[:-1], dtype=jnp.int32)
        cond = nn.Embed(NUM_CONDITIONS, 16)(condition)
        t = jnp.broadcast_to(t, x_t.shape[:-1])
        x = jnp.concatenate([features, cond, TimeEmbedding()(t), x_t], axis=-1)
        return MLP(self.hidden_dims, self.flat_dim)(x)
