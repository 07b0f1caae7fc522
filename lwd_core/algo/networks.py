"""Shared Flax building blocks: MLPs, observation encoders, instruction embedding, critic ensembles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lwd_core.algo.text import PAD_TOKEN


class MLP(nn.Module):
    """GELU + LayerNorm hidden layers (the QAM reference's critic recipe), linear output.

    ``dtype`` is the hidden layers' matmul dtype (bfloat16: tensor cores on a GPU); parameters, the
    LayerNorm and the output layer stay float32, so values and velocities keep full precision."""

    hidden_dims: Sequence[int]
    out_dim: int
    layer_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden_dims:
            x = nn.Dense(width, dtype=self.dtype)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = nn.gelu(x)
        return nn.Dense(self.out_dim)(x)


class InstructionEmbedding(nn.Module):
    """Learned embedding of instruction tokens, mean-pooled over non-padding tokens."""

    vocab_size: int
    dim: int

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        embedded = nn.Embed(self.vocab_size, self.dim)(tokens)
        mask = (tokens != PAD_TOKEN)[..., None].astype(embedded.dtype)
        return (embedded * mask).sum(-2) / jnp.maximum(mask.sum(-2), 1.0)


class StateEncoder(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return nn.gelu(nn.LayerNorm()(nn.Dense(self.dim)(obs)))


class ConvEncoder(nn.Module):
    """Small conv stack for pixel observations (uint8 HWC), used when pixels are on."""

    dim: int
    channels: Sequence[int] = (32, 64, 64)

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        x = pixels.astype(jnp.float32) / 255.0
        for width in self.channels:
            x = nn.gelu(nn.Conv(width, (3, 3), strides=(2, 2))(x))
        x = x.reshape(*x.shape[:-3], -1)
        return nn.gelu(nn.LayerNorm()(nn.Dense(self.dim)(x)))


class Observer(nn.Module):
    """Observation + instruction -> feature vector: the backbone every head sits on.

    This is the seam where a pretrained VLA backbone would plug in: anything mapping
    (observation, instruction tokens) to a feature vector can replace it.
    """

    vocab_size: int
    feature_dim: int = 256
    text_dim: int = 64
    pixels: bool = False
    # False: a state vector passes through as it is, for heads whose first hidden layer can take it
    # directly (critic and value, as in the QAM reference: one layer less in each ensemble head).
    encode_state: bool = True

    @nn.compact
    def __call__(self, obs: jax.Array, tokens: jax.Array) -> jax.Array:
        if self.pixels:
            observed = ConvEncoder(self.feature_dim)(obs)
        else:
            observed = StateEncoder(self.feature_dim)(obs) if self.encode_state else obs
        text = InstructionEmbedding(self.vocab_size, self.text_dim)(tokens)
        return jnp.concatenate([observed, text], axis=-1)


class CriticEnsemble(nn.Module):
    """Q(s, a) with ``heads`` independent MLPs, each over state, instruction and the whole chunk.

    The heads are applied one by one rather than vmapped: on CPU, XLA runs the separate matmuls and
    their backward passes ~15% faster than one batched matmul over a stacked head axis."""

    heads: int
    hidden_dims: Sequence[int]
    vocab_size: int
    pixels: bool = False
    dtype: Any = jnp.float32  # the hidden layers' matmul dtype (MLP)

    @nn.compact
    def __call__(self, obs: jax.Array, tokens: jax.Array, actions: jax.Array) -> jax.Array:
        heads = [_CriticHead(self.hidden_dims, self.vocab_size, self.pixels, self.dtype) for _ in range(self.heads)]
        return jnp.stack([head(obs, tokens, actions) for head in heads])


class _CriticHead(nn.Module):
    hidden_dims: Sequence[int]
    vocab_size: int
    pixels: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obs: jax.Array, tokens: jax.Array, actions: jax.Array) -> jax.Array:
        features = Observer(self.vocab_size, self.hidden_dims[0], pixels=self.pixels, encode_state=False)(obs, tokens)
        x = jnp.concatenate([features, actions], axis=-1)
        return MLP(self.hidden_dims, 1, dtype=self.dtype)(x)[..., 0]


def pessimistic(q_heads: jax.Array, std_weight: float) -> jax.Array:
    """Aggregate ensemble heads (axis 0) as mean - std_weight * std."""
    return q_heads.mean(0) - std_weight * q_heads.std(0)
