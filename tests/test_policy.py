from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lwd_core.algo.flow import euler_sample
from lwd_core.algo.policy import FlowPolicy
from lwd_core.algo.text import MAX_TOKENS, PAD_TOKEN, VOCAB_SIZE, tokenize


def test_tokenizer_is_deterministic_and_padded():
    a = tokenize("Put the RED cube on the shelf.")
    assert a.shape == (MAX_TOKENS,) and a.dtype == np.int32
    np.testing.assert_array_equal(a, tokenize("put the red cube on the shelf"))
    assert (a[:7] != PAD_TOKEN).all() and (a[7:] == PAD_TOKEN).all()
    assert a[1] == a[5]  # "the" twice -> same id
    assert not np.array_equal(a, tokenize("put the blue cube on the shelf"))
    assert a.max() < VOCAB_SIZE


def test_instruction_changes_the_action():
    policy = FlowPolicy(chunk=3, action_dim=2, hidden_dims=(32, 32), vocab_size=VOCAB_SIZE)
    obs = jnp.zeros((1, 5))
    x = jnp.zeros((1, 6))
    params = policy.init(jax.random.PRNGKey(0), obs, jnp.asarray(tokenize("open the drawer"))[None], x, jnp.zeros(1))
    v1 = policy.apply(params, obs, jnp.asarray(tokenize("open the drawer"))[None], x, jnp.zeros(1))
    v2 = policy.apply(params, obs, jnp.asarray(tokenize("stack the cubes"))[None], x, jnp.zeros(1))
    assert v1.shape == (1, 6) and not np.allclose(v1, v2)


def test_pixel_observations_use_the_conv_encoder():
    policy = FlowPolicy(chunk=2, action_dim=3, hidden_dims=(32,), vocab_size=VOCAB_SIZE, pixels=True)
    pixels = jnp.zeros((2, 32, 32, 3), jnp.uint8)
    tokens = jnp.zeros((2, MAX_TOKENS), jnp.int32)
    params = policy.init(jax.random.PRNGKey(0), pixels, tokens, jnp.zeros((2, 6)), jnp.zeros(2))
    assert any("Conv" in "/".join(map(str, path)) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0])
    actions = euler_sample(lambda x, t: policy.apply(params, pixels, tokens, x, t), jnp.ones((2, 6)), 4)
    assert actions.shape == (2, 6) and bool(jnp.isfinite(actions).all())


class FrozenBackbone(nn.Module):
    """Stands in for a pretrained VLA: features from a fixed projection."""

    @nn.compact
    def __call__(self, obs, tokens):
        return jnp.tanh(obs @ jnp.ones((obs.shape[-1], 8)))


def test_a_custom_backbone_plugs_in():
    policy = FlowPolicy(chunk=1, action_dim=2, hidden_dims=(16,), vocab_size=VOCAB_SIZE, backbone=FrozenBackbone())
    obs, tokens = jnp.ones((3, 4)), jnp.zeros((3, MAX_TOKENS), jnp.int32)
    params = policy.init(jax.random.PRNGKey(0), obs, tokens, jnp.zeros((3, 2)), jnp.zeros(3))
    names = "/".join(str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0])
    assert "Observer" not in names and "InstructionEmbedding" not in names
    assert policy.apply(params, obs, tokens, jnp.zeros((3, 2)), jnp.zeros(3)).shape == (3, 2)
