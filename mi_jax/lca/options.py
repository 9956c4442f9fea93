"""Checks and resolution of the options shared by :func:`mi_jax.lca.solve`
and the solver objects of :mod:`mi_jax.lca.objects`.

Every check raises a one-line ``ValueError`` that names the option and what
is allowed; values that are traced (λ, τ, dt under ``jit``) pass the checks
that need a concrete number.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax.lca import operators

PADDINGS = ('same', 'valid')
LATERALS = ('auto', 'recon', 'gram', 'gemm', 'fft')
_RECON_ADVANTAGE = 4.0  # 'auto' picks 'recon' only below 1/4 of the Gram FLOPs
# 'auto' on XLA:CPU: estimated time = factor × multiply-adds
# (operators.lateral_flops; 'gemm' counts as 'recon'), relative to the gram
# conv's rate. Measured (jax 0.10.2, XLA:CPU on 2 shared cores, N = 16, time
# per step and sample from the difference of 51- and 11-step solves, 5×5
# atoms), in ns per 1000 MACs, gram / gemm / fft:
#   28²×1→16 (SG layer 1)   0.030 / 0.148 / 0.190   (gemm fastest: 93 µs)
#   28²×16→28 (SG layer 2)  0.027 / 0.135 / 0.157   (fft fastest: 380 µs)
#   28²×1→64                0.020 / 0.056 / 0.210   (gemm)
#   32²×3→64                0.029 / 0.066 / 0.145   (gemm)
#   28²×8→8                 0.088 / 0.308 / 0.304   (fft)
#   14²×32→32, 3×3 atoms    0.016 / 0.060 / 0.182   (gram)
#   28²×16→28, 'valid'      0.040 / 0.109 / 0.177   (fft)
#   28²×16→28, stride 2     0.028 / 0.121 / 0.193   (gram ≈ fft: 106 vs 115 µs)
#   28²×1→64, stride 2      0.016 / 0.105 / 0.126   (gemm)
# Ratios to gram: gemm 2.3–6.6 (median ≈ 4, today's _RECON_ADVANTAGE), fft
# 3.5–11 (median ≈ 6); 8 picks the fastest form in every row above. No
# accelerator was available to measure FFTs on GPU/TPU, so off CPU 'auto'
# keeps the recon-vs-gram rule and never picks 'fft'.
_CPU_COST_FACTORS = {'gram': 1.0, 'gemm': _RECON_ADVANTAGE, 'fft': 8.0}


def auto_lateral(geom: operators.Geometry, channels: int, features: int, backend: str) -> str:
  """The lateral form ``lateral='auto'`` runs for this shape on ``backend``."""
  flops = operators.lateral_flops(geom, channels, features)
  flops['gemm'] = flops['recon']
  if backend == 'cpu':
    # 'recon' is left out: its GEMM form does the same arithmetic faster on
    # XLA:CPU, whose two convolutions inside a loop body are slow.
    return min(_CPU_COST_FACTORS, key=lambda form: _CPU_COST_FACTORS[form] * flops[form])
  # The reconstruction path does fewer FLOPs, but runs at a lower rate: it
  # must save a lot before it wins.
  return 'recon' if flops['gram'] > _RECON_ADVANTAGE * flops['recon'] else 'gram'


def resolve_lateral(lateral: str, geom: operators.Geometry, channels: int, features: int,
                    dense: bool) -> str:
  """The lateral form that runs: 'auto' resolved for this shape and backend.

  A dense problem has a 1×1 code grid, whose FFT of size 1 is the identity:
  'fft' runs as 'gram' (the F × F matrix) there.
  """
  if lateral == 'auto':
    lateral = auto_lateral(geom, channels, features, jax.default_backend())
  return 'gram' if dense and lateral == 'fft' else lateral


def problem_geometry(x, dictionary, stride, padding) -> tuple[operators.Geometry, bool]:
  """``(geometry, dense)`` of images ``(N, H, W, C)`` with an HWIO dictionary,
  or of vectors ``(N, D)`` with a ``(D, F)`` one; checks dtypes and shapes."""
  x_shape, d_shape = np.shape(x), np.shape(dictionary)
  for name, value in (('x', x), ('dictionary', dictionary)):
    if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
      raise ValueError(
          f"{name} must be a floating-point array, got dtype {jnp.result_type(value)}"
          " (scale integer images to float first)"
      )
  dense = len(x_shape) == 2
  if len(x_shape) not in (2, 4):
    raise ValueError(
        f"x must have rank 4 (N, H, W, C: NHWC) or 2 (N, D), got shape {x_shape}"
    )
  if len(d_shape) != len(x_shape):
    want = '(kh, kw, C, F) (HWIO)' if not dense else '(D, F)'
    raise ValueError(f"dictionary must have shape {want} for x of rank {len(x_shape)}, got shape {d_shape}")
  if x_shape[-1] != d_shape[-2]:
    hint = '; is x NCHW? mi_jax.lca wants NHWC' if not dense else ''
    raise ValueError(
        f"x has {x_shape[-1]} channels in its last axis but dictionary expects "
        f"{d_shape[-2]} (dictionary axis -2){hint}"
    )
  if x_shape[0] < 1 or d_shape[-1] < 1 or 0 in x_shape:
    raise ValueError(f"x and dictionary must be non-empty, got shapes {x_shape} and {d_shape}")
  if dense:
    if pair('stride', stride) != (1, 1):
      raise ValueError(f"stride must be 1 for a dense (N, D) problem, got {stride!r}")
    return operators.Geometry((1, 1), (1, 1), (1, 1), 'valid'), True
  geom = operators.Geometry(
      image_hw=tuple(x_shape[1:3]),
      kernel_hw=tuple(d_shape[:2]),
      stride=pair('stride', stride),
      padding=padding,
  )
  if padding == 'same' and any(k % 2 == 0 for k in geom.kernel_hw):
    raise ValueError(f"padding='same' needs an odd kernel, got kernel {geom.kernel_hw}; use padding='valid'")
  if any(c < 1 for c in geom.code_hw):
    raise ValueError(
        f"x spatial size {geom.image_hw} is smaller than the kernel {geom.kernel_hw} "
        f"with padding={padding!r}"
    )
  return geom, False


def choice(name, value, allowed):
  if value not in allowed:
    raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def pair(name, value) -> tuple[int, int]:
  pair_ = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
  if len(pair_) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair_):
    raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
  return tuple(int(v) for v in pair_)


def integer(name, value, *, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def scalar(name, value, *, minimum, strict):
  """Checks a hyperparameter's value when it is concrete (traced ones pass)."""
  if np.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
  if isinstance(value, jax.core.Tracer):
    return
  v = float(np.asarray(value))
  ok = v > minimum if strict else v >= minimum
  if not ok or not np.isfinite(v):
    bound = '> 0' if strict else '>= 0'
    raise ValueError(f"{name} must be a finite number {bound}, got {v!r}")


def tolerance(name, value):
  """``None`` or a float > 0 (a Python number: it shapes the compiled loop)."""
  if value is not None and not (isinstance(value, (int, float)) and value > 0):
    raise ValueError(f"{name} must be None or a float > 0, got {value!r}")


def cg_settings(cg_tol, cg_maxiter):
  if not cg_tol > 0 or int(cg_maxiter) < 1:
    raise ValueError(f"cg_tol must be > 0 and cg_maxiter >= 1, got {cg_tol!r}, {cg_maxiter!r}")
