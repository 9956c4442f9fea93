"""Dictionary learning rules, as pure functions of (x, codes, dictionary).

* :func:`hebbian_update` is lcapt's built-in rule (``update_weights``):

      ΔΩ[i, j, c, f] = η_d / (n_f + 1) · Σ_{n,p} a[n, p, f] · e[n, s·p + (i, j), c]

  with ``e = x − recon(a)`` the image-sized reconstruction error (zero-padded
  like the input), ``n_f`` the number of non-zero codes of atom f in the
  batch, then an element-wise clip to ±``clip`` and atom renormalisation.
  Up to the per-atom scaling it is a gradient step on ½‖x − recon(a)‖².
* :func:`dictionary_gradient_step` is that plain gradient step (batch-mean
  loss) followed by renormalisation. For task-driven training, differentiate
  through :func:`mi_jax.lca.solve` with optax and apply
  :func:`normalize_dictionary` after each update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mi_jax.lca import operators
from mi_jax.lca.options import pair as _pair


def normalize_dictionary(dictionary: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Each atom (last axis) scaled to unit L2 norm: ω_f / (‖ω_f‖ + eps)."""
  axes = tuple(range(dictionary.ndim - 1))
  norms = jnp.sqrt(jnp.sum(jnp.square(dictionary), axis=axes, keepdims=True))
  return dictionary / (norms + eps)


def _geometry(x, dictionary, stride, padding):
  if x.ndim == 2:
    x, dictionary = operators.as_conv(x, dictionary)
    return x, dictionary, operators.Geometry((1, 1), (1, 1), (1, 1), 'valid'), True
  geom = operators.Geometry(
      tuple(x.shape[1:3]), tuple(dictionary.shape[:2]), _pair('stride', stride), padding
  )
  return x, dictionary, geom, False


def _as_conv_codes(codes, dense):
  return codes[:, None, None, :] if dense else codes


def reconstruct(codes, dictionary, *, image_hw, stride=1, padding='same'):
  """Image-sized reconstruction Pᵀ Φ a (lcapt's ``compute_recon``)."""
  dense = dictionary.ndim == 2
  if dense:
    return codes @ dictionary.T
  geom = operators.Geometry(tuple(image_hw), tuple(dictionary.shape[:2]), _pair('stride', stride), padding)
  return operators.from_canvas(operators.synthesis(codes, dictionary, geom), geom)


def reconstruction_error(x, codes, dictionary, *, stride=1, padding='same'):
  """e = x − recon(a), image-sized."""
  image_hw = None if dictionary.ndim == 2 else x.shape[1:3]
  return x - reconstruct(codes, dictionary, image_hw=image_hw, stride=stride, padding=padding)


def hebbian_update(x, codes, dictionary, *, eta, stride=1, padding='same', clip=jnp.inf,
                   normalize=True):
  """lcapt's Hebbian dictionary update; returns ``(new_dictionary, update)``.

  ``x`` must be the input the codes were computed from (after
  :func:`mi_jax.lca.normalize_per_sample` if the solve normalised it).
  """
  error = reconstruction_error(x, codes, dictionary, stride=stride, padding=padding)
  error, conv_dictionary, geom, dense = _geometry(error, dictionary, stride, padding)
  conv_codes = _as_conv_codes(codes, dense)
  # Σ_{n,p} a[n,p,f] · patch_p(e)[i,j,c] is the VJP of Ω ↦ Φᵀ P e at cotangent a.
  _, drive_vjp = jax.vjp(lambda d: operators.drive(error, d, geom), conv_dictionary)
  (update,) = drive_vjp(conv_codes)
  times_active = jnp.sum(conv_codes != 0, axis=(0, 1, 2)) + 1
  update = jnp.clip(update * (eta / times_active), -clip, clip)
  update = update.reshape(dictionary.shape)
  new_dictionary = dictionary + update
  if normalize:
    new_dictionary = normalize_dictionary(new_dictionary)
  return new_dictionary, update


def reconstruction_loss(x, codes, dictionary, *, stride=1, padding='same'):
  """Batch mean of ½‖x − recon(a)‖² (lcapt's L2 metric)."""
  error = reconstruction_error(x, codes, dictionary, stride=stride, padding=padding)
  return 0.5 * jnp.mean(jnp.sum(jnp.square(error.reshape(error.shape[0], -1)), axis=1))


def dictionary_gradient_step(x, codes, dictionary, *, learning_rate, stride=1, padding='same'):
  """Ω ← normalize(Ω − lr·∇_Ω reconstruction_loss), codes held fixed."""
  grad = jax.grad(reconstruction_loss, argnums=2)(x, codes, dictionary, stride=stride, padding=padding)
  return normalize_dictionary(dictionary - learning_rate * grad)
