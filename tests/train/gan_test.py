"""GAN steps: shapes, generator loss falls, gradient penalty, train_gan + resume + sample."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mi_jax.train import gan
from mi_jax.train.state import replicated
from mi_jax.train.step import jit_step
from mi_jax.utils.metric_writer import MetricWriter
from tests.helpers import mesh_of

SHAPE = (8, 8, 1)


def _state(loss, *, g_tx, d_tx, conditional=False, num_classes=0):
  g, d = gan.build_gan(image_shape=SHAPE, latent_dim=4, num_classes=num_classes, conditional=conditional,
                       loss=loss, width=4, seed=0)
  g_graphdef, g_state = gan._sub_state(g, g_tx)
  d_graphdef, d_state = gan._sub_state(d, d_tx)
  return g_graphdef, d_graphdef, {'step': jnp.zeros((), jnp.int32), 'g': g_state, 'd': d_state}


def test_gradient_penalty_matches_per_example_computation():
  w = jax.random.normal(jax.random.key(0), (3 * 3,))
  critic = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w) * 3.0 + jnp.sum(x.reshape(x.shape[0], -1) ** 2, -1)
  real = jax.random.uniform(jax.random.key(1), (5, 3, 3, 1))
  fake = jax.random.uniform(jax.random.key(2), (5, 3, 3, 1))
  alpha = jax.random.uniform(jax.random.key(3), (5,))
  expected = []
  for i in range(5):
    point = alpha[i] * real[i:i + 1] + (1 - alpha[i]) * fake[i:i + 1]
    grad = jax.grad(lambda x: critic(x)[0])(point)
    expected.append((np.linalg.norm(np.asarray(grad).ravel()) - 1.0) ** 2)
  np.testing.assert_allclose(gan.gradient_penalty(critic, real, fake, alpha), np.mean(expected), rtol=1e-4)


@pytest.mark.parametrize('loss,conditional', [('wgan-gp', False), ('dcgan', True), ('kedmi', False)])
def test_step_shapes_and_measurements(loss, conditional):
  tx = optax.adam(1e-3)
  num_classes = 3 if (conditional or loss == 'kedmi') else 0
  g_graphdef, d_graphdef, state = _state(loss, g_tx=tx, d_tx=tx, conditional=conditional, num_classes=num_classes)
  step = jax.jit(gan.make_gan_step(g_graphdef, d_graphdef, tx, tx, loss=loss, n_critic=2, conditional=conditional,
                                   num_classes=num_classes, latent_dim=4))
  batch = {'image': jnp.full((4, *SHAPE), 200, jnp.uint8), 'label': jnp.array([0, 1, 2, 0]),
           'soft': jax.nn.softmax(jnp.arange(12.0).reshape(4, 3))}
  new, m = step(state, batch, jax.random.key(0))
  assert int(new['step']) == 1 and np.isfinite(float(m['d_loss'])) and np.isfinite(float(m['g_loss']))
  assert jax.tree.structure(new) == jax.tree.structure(state)
  # Step 0 of n_critic=2 updates only the discriminator; step 1 also the generator.
  jax.tree.map(np.testing.assert_array_equal, new['g']['params'], state['g']['params'])
  assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new['d']['params'], state['d']['params'])))
  newer, _ = step(new, batch, jax.random.key(0))
  assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), newer['g']['params'], new['g']['params'])))


def test_generator_loss_falls_against_a_fixed_discriminator():
  """Frozen D: a few G updates must lower L_G = E[softplus(−D(G(z)))]."""
  g_graphdef, d_graphdef, state = _state('dcgan', g_tx=optax.adam(1e-2), d_tx=optax.set_to_zero())
  step = jax.jit(gan.make_gan_step(g_graphdef, d_graphdef, optax.adam(1e-2), optax.set_to_zero(), loss='dcgan',
                                   latent_dim=4))
  batch = {'image': jnp.full((16, *SHAPE), 255, jnp.uint8)}
  losses = []
  for _ in range(15):
    state, m = step(state, batch, jax.random.key(1))
    losses.append(float(m['g_loss']))
  assert losses[-1] < 0.8 * losses[0], losses


def test_train_gan_learns_a_constant_image_and_resumes(tmp_path):
  """Trivial distribution (every pixel 0.85): samples move there from ≈0.5; a rerun resumes."""
  images = np.full((64, *SHAPE), round(0.85 * 255), np.uint8)
  kwargs = dict(images=images, loss='dcgan', latent_dim=4, epochs=40, batch_size=16, learning_rate=1e-2, seed=0,
                mesh=mesh_of(2), workdir=str(tmp_path), width=4, log_every=40, checkpoint_every=80)
  before = gan.build_gan(image_shape=SHAPE, latent_dim=4, width=4, loss='dcgan')[0]
  initial_mean = float(before(jax.random.normal(jax.random.key(0), (32, 4))).mean())
  result = gan.train_gan(writer=MetricWriter(str(tmp_path)), **kwargs)
  samples = gan.sample(result, 32, key=jax.random.key(5), batch_size=16)
  assert samples.shape == (32, *SHAPE) and samples.dtype == np.float32
  assert abs(float(samples.mean()) - 0.85) < 0.5 * abs(initial_mean - 0.85), (initial_mean, samples.mean())
  again = gan.train_gan(writer=MetricWriter(str(tmp_path)), **kwargs)  # finds the final checkpoint
  jax.tree.map(np.testing.assert_allclose, again.generator_state['params'], result.generator_state['params'])


def test_train_gan_rejects_bad_fields(tmp_path):
  images = np.zeros((8, *SHAPE), np.uint8)
  common = dict(images=images, epochs=1, batch_size=4, seed=0, mesh=mesh_of(1), workdir=str(tmp_path), writer=None)
  with pytest.raises(ValueError, match='loss must be one of'):
    gan.train_gan(loss='hinge', **common)
  with pytest.raises(ValueError, match='soft_labels'):
    gan.train_gan(loss='kedmi', **common)
  with pytest.raises(ValueError, match='labels'):
    gan.train_gan(conditional=True, **common)
