"""Generator / Discriminator: shapes, ranges, conditioning, class head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mi_jax.models.gan import Discriminator, Generator


@pytest.mark.parametrize('shape', [(28, 28, 1), (32, 16, 3)])
def test_generator_shapes_and_range(shape):
  g = Generator(latent_dim=8, image_shape=shape, width=4, rngs=nnx.Rngs(0))
  z = jax.random.normal(jax.random.key(0), (5, 8)) * 10.0
  out = g(z, train=True)
  assert out.shape == (5, *shape) and out.dtype == jnp.float32
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  assert g(z).shape == (5, *shape)  # eval mode too


def test_conditional_generator_uses_labels():
  g = Generator(latent_dim=8, num_classes=3, width=4, rngs=nnx.Rngs(0))
  z = jnp.ones((2, 8))
  a, b = g(z, jnp.array([0, 0])), g(z, jnp.array([0, 2]))
  np.testing.assert_allclose(a[0], b[0], atol=1e-6)
  assert float(jnp.abs(a[1] - b[1]).max()) > 1e-5
  with pytest.raises(ValueError, match='labels'):
    g(z)


def test_discriminator_outputs():
  x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
  d = Discriminator(width=4, rngs=nnx.Rngs(0))
  assert d(x).shape == (3,)
  dc = Discriminator(num_classes=4, width=4, rngs=nnx.Rngs(0))
  assert dc(x, jnp.array([0, 1, 3])).shape == (3,)
  dk = Discriminator(num_classes=5, width=4, class_head=True, rngs=nnx.Rngs(0))
  logit, classes = dk(x)
  assert logit.shape == (3,) and classes.shape == (3, 5)
  # Semi-supervised GAN: the real/fake logit is log Σ_k exp(class logit k).
  np.testing.assert_allclose(logit, jax.nn.logsumexp(classes, -1), rtol=1e-5)


def test_discriminator_examples_are_independent():
  """No batch coupling (a WGAN-GP requirement): one example's score ignores the others."""
  d = Discriminator(width=4, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(2), (4, 28, 28, 1))
  y = x.at[1:].set(0.0)
  np.testing.assert_allclose(d(x)[0], d(y)[0], rtol=1e-5)


@pytest.mark.parametrize('bad', [(28, 30, 1), (28, 28)])
def test_bad_image_shape(bad):
  with pytest.raises(ValueError, match='image_shape'):
    Generator(image_shape=bad, rngs=nnx.Rngs(0))
