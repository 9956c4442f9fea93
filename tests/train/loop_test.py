"""The loop: kill mid-run, rerun → resumes and ends where an uninterrupted run ends."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from mi_jax.defenses import build_target
from mi_jax.train import loop
from mi_jax.data import to_global_array
from mi_jax.train.state import init_train_state, make_optimizer, replicated
from mi_jax.train.step import jit_step, make_classifier_step
from mi_jax.utils.metric_writer import MetricWriter
from tests.helpers import load_config, mesh_of, synthetic_digits

TOTAL = 6


class Killed(Exception):
  pass


def _train(workdir, *, kill_at=None, make_nan=False):
  config = load_config('tiny')
  model = build_target(config, (28, 28, 1), 10, rngs=nnx.Rngs(0))
  tx = make_optimizer(config.train)
  graphdef, state = init_train_state(model, tx)
  mesh = mesh_of(2)
  state = jax.device_put(state, replicated(mesh, state))
  images, labels = synthetic_digits(64)
  if make_nan:
    images = images.astype(np.float32) * np.nan

  def batch_at(step):
    if step == kill_at:
      raise Killed(step)
    order = np.random.default_rng([0, step // 4]).permutation(64)[(step % 4) * 16:(step % 4 + 1) * 16]
    return to_global_array({'image': images[order], 'label': labels[order]}, mesh)

  with jax.set_mesh(mesh):
    return loop.fit(
        phase='target', step_fn=jit_step(make_classifier_step(graphdef, tx), state, mesh),
        state=state, batch_at=batch_at, position_at=lambda s: {'epoch': s // 4, 'batch': s % 4},
        total_steps=TOTAL, rng=jax.random.key(0), checkpoint_dir=str(workdir / 'ckpt'),
        checkpoint_every=2, log_every=1, writer=MetricWriter(str(workdir)))


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path):
  uninterrupted = jax.device_get(_train(tmp_path / 'a'))
  with pytest.raises(Killed):
    _train(tmp_path / 'b', kill_at=3)  # checkpoints exist for step 2 only
  resumed = jax.device_get(_train(tmp_path / 'b'))
  for a, b in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
  steps = [json.loads(line)['step'] for line in (tmp_path / 'b' / 'metrics.jsonl').read_text().splitlines()]
  assert steps == [1, 2, 3, 3, 4, 5, 6]  # step 3 ran twice: before the kill and after resuming from 2


def test_non_finite_loss_stops_with_the_step_window(tmp_path):
  with pytest.raises(loop.NonFiniteLossError, match=r"between steps 1 and 1"):
    _train(tmp_path, make_nan=True)
