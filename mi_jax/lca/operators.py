"""Linear operators of a convolutional dictionary on its full canvas.

A dictionary Ω with layout HWIO ``(kh, kw, C, F)`` and stride ``s`` defines the
synthesis operator Φ: codes ``a`` of shape ``(N, H', W', F)`` → images on the
*full canvas* of shape ``(N, Hc, Wc, C)`` with ``Hc = (H' − 1)·s_h + kh``:

    (Φ a)[n, s·p + i, c] = Σ_f Σ_p a[n, p, f] · Ω[i, c, f]      (transposed conv)

Φ never crops, so its adjoint Φᵀ is a plain VALID, strided correlation over the
canvas. An input image ``x`` of shape ``(N, H, W, C)`` enters the canvas through
``P``: zero padding by ``k // 2`` ('same') or nothing ('valid'), then cut or
zero-extended to ``Hc``. All solvers in :mod:`mi_jax.lca` minimise

    E(a) = ½‖P x − Φ a‖²₂ + λ‖a‖₁

whose bottom-up drive is ``b = Φᵀ P x`` (exactly lcapt's strided, padded
``conv2d(x, Ω)``) and whose Gram operator ``ΦᵀΦ`` is lcapt's full-canvas
lateral connectivity plus its self term. lcapt removes the self term
``‖ω_f‖²·a_f`` (its ``G = Ω ⋆ Ωᵀ − I`` for unit-norm atoms), so do we.

A dense dictionary ``(D, F)`` is the special case of a 1×1 kernel on a 1×1
canvas; :func:`as_conv` converts it.

The lateral term ``(ΦᵀΦ − diag‖ω‖²) a`` has four exact formulations:

* ``'recon'``: one transposed conv and one conv per step, cost
  ``≈ 2·H'W'·F·C·kh·kw`` MACs per sample;
* ``'gram'``: one stride-1 conv with a precomputed ``(2m_h+1)×(2m_w+1)×F×F``
  kernel, ``m = (k − 1) // s``, cost ``≈ H'W'·F²·(2m_h+1)(2m_w+1)``;
* ``'gemm'``: the ``'recon'`` arithmetic as im2col/col2im GEMMs, which
  XLA:CPU runs much faster than convolutions inside a compiled loop;
* ``'fft'``: the ``'gram'`` correlation by the convolution theorem.

The FFT form. The gram form computes, on the code grid (codes zero outside
it), ``G a [p] = Σ_{|d| ≤ m} a[p + d] K[m + d]`` with ``K = gram_kernel``:
a linear convolution ``(a ∗ K')[p] = Σ_e a[p − e] K'[e]`` with the flipped
kernel ``K'[e] = K[m − e]``. Zero-pad ``a`` to an ``S_h × S_w`` grid and
place ``K'[e]`` at ``e mod S``; the circular convolution of the two is then

    G a = crop_{H'×W'}( irfft2( rfft2(pad_S a)[u, v, f] · K̂[u, v, f, g] ) ),
    K̂ = rfft2(K' placed mod S)     (once per solve; differentiable in Ω)

and it equals the linear one on the code grid when ``S ≥ H' + m`` per axis:
for an output ``p ∈ [0, H')`` and a tap ``|e| ≤ m``, an index ``p − e``
that leaves the grid lies in ``[−m, 0)`` or ``[H', H' + m)``, which wraps
into ``[S − m, S)`` resp. stays in ``[H', S)``: the zero padding, never the
codes. Taps with ``|e| ≥ H'`` never meet a code, so ``m`` is first clipped to
``H' − 1``. The result is therefore the same sum as ``'gram'`` in exact
arithmetic; in float32 only the FFTs' rounding differs (``O(ε log S)``
relative to the size of the terms). Cost per sample ≈ two real FFTs of
``F`` channels (``∝ F·S_hS_w·log₂(S_hS_w)``) plus ``S_h(S_w/2+1)·F²``
complex MACs, independent of the kernel's radius.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp

Padding = Literal['same', 'valid']
_DIMS = ('NHWC', 'HWIO', 'NHWC')


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Static shapes of one convolutional sparse-coding problem."""

  image_hw: tuple[int, int]  # (H, W) of the input
  kernel_hw: tuple[int, int]  # (kh, kw)
  stride: tuple[int, int]  # (sh, sw)
  padding: Padding  # 'same' (k // 2 each side, odd k) or 'valid'

  @property
  def pad(self) -> tuple[int, int]:
    if self.padding == 'same':
      return (self.kernel_hw[0] // 2, self.kernel_hw[1] // 2)
    return (0, 0)

  @property
  def code_hw(self) -> tuple[int, int]:
    """Spatial size of the codes: floor((H + 2p − k) / s) + 1."""
    return tuple(
        (h + 2 * p - k) // s + 1
        for h, p, k, s in zip(self.image_hw, self.pad, self.kernel_hw, self.stride)
    )

  @property
  def canvas_hw(self) -> tuple[int, int]:
    """Support of Φ a: (H' − 1)·s + k."""
    return tuple(
        (hc - 1) * s + k for hc, s, k in zip(self.code_hw, self.stride, self.kernel_hw)
    )

  @property
  def gram_radius(self) -> tuple[int, int]:
    """Largest code offset m with overlapping atoms: (k − 1) // s."""
    return tuple((k - 1) // s for k, s in zip(self.kernel_hw, self.stride))


def matmul_precision():
  """The precision of the solver's convolutions and products: HIGHEST (true
  float32, every backend) unless the caller chose one with
  ``jax.default_matmul_precision`` (e.g. ``'tensorfloat32'`` or
  ``'bfloat16'`` on a GPU/TPU, to trade code accuracy for speed;
  ``benchmarks/accelerator_bench.py`` measures both). Read at trace time:
  the choice is part of JAX's compilation cache key."""
  chosen = jax.config.jax_default_matmul_precision
  return jax.lax.Precision.HIGHEST if chosen is None else chosen


def to_canvas(x: jax.Array, geom: Geometry) -> jax.Array:
  """P x: zero-pad by the 'same' margin, then cut or extend to the canvas."""
  (ph, pw), (hc, wc) = geom.pad, geom.canvas_hw
  h, w = geom.image_hw
  # lax.pad accepts negative high padding, which crops.
  config = ((0, 0, 0), (ph, hc - ph - h, 0), (pw, wc - pw - w, 0), (0, 0, 0))
  return jax.lax.pad(x, jnp.zeros((), x.dtype), config)


def from_canvas(canvas: jax.Array, geom: Geometry) -> jax.Array:
  """Pᵀ: the image-sized window of a canvas (the 'same'/'valid' reconstruction)."""
  (ph, pw), (hc, wc) = geom.pad, geom.canvas_hw
  h, w = geom.image_hw
  # Undo the padding of to_canvas; where the canvas is shorter than the
  # image (valid padding) the missing rows are zeros.
  config = ((0, 0, 0), (-ph, h + ph - hc, 0), (-pw, w + pw - wc, 0), (0, 0, 0))
  return jax.lax.pad(canvas, jnp.zeros((), canvas.dtype), config)


def analysis(canvas: jax.Array, dictionary: jax.Array, geom: Geometry) -> jax.Array:
  """Φᵀ r: VALID strided correlation of a canvas with every atom."""
  return jax.lax.conv_general_dilated(
      canvas,
      dictionary,
      window_strides=geom.stride,
      padding='VALID',
      dimension_numbers=_DIMS,
      precision=matmul_precision(),
  )


def synthesis(codes: jax.Array, dictionary: jax.Array, geom: Geometry) -> jax.Array:
  """Φ a: the exact adjoint of :func:`analysis` (a transposed convolution)."""
  n = codes.shape[0]
  canvas_shape = (n, *geom.canvas_hw, dictionary.shape[2])
  # The primal only gives linear_transpose its type. Inside shard_map (the
  # sparse layers on > 1 device) that type must carry the codes' varying
  # manual axes, which a ShapeDtypeStruct cannot; outside it, a
  # ShapeDtypeStruct keeps an explicit mesh's sharding out of the way.
  varying = tuple(sorted(jax.typeof(codes).manual_axis_type.varying))
  if varying:
    canvas = jax.lax.pcast(jnp.zeros(canvas_shape, codes.dtype), varying, to='varying')
  else:
    canvas = jax.ShapeDtypeStruct(canvas_shape, codes.dtype)
  (transpose,) = jax.linear_transpose(
      lambda r: analysis(r, dictionary, geom), canvas
  )(codes)
  return transpose


def drive(x: jax.Array, dictionary: jax.Array, geom: Geometry) -> jax.Array:
  """b = Φᵀ P x, the bottom-up drive (lcapt's padded conv of the input)."""
  return analysis(to_canvas(x, geom), dictionary, geom)


def atom_sq_norms(dictionary: jax.Array) -> jax.Array:
  """‖ω_f‖² per atom, shape (F,)."""
  return jnp.sum(jnp.square(dictionary), axis=(0, 1, 2))


def gram(codes: jax.Array, dictionary: jax.Array, geom: Geometry) -> jax.Array:
  """ΦᵀΦ a, through the reconstruction."""
  return analysis(synthesis(codes, dictionary, geom), dictionary, geom)


def lateral_recon(codes, dictionary, geom):
  """(ΦᵀΦ − diag‖ω‖²) a through one transposed conv and one conv."""
  return gram(codes, dictionary, geom) - atom_sq_norms(dictionary) * codes


def gram_kernel(dictionary: jax.Array, geom: Geometry) -> jax.Array:
  """The lateral connectivity G as an HWIO kernel ``(2m_h+1, 2m_w+1, F, F)``.

  Built from the impulse responses of ΦᵀΦ (so it is exact for any stride and
  differentiable in Ω), with each atom's self term removed at the centre.
  """
  (mh, mw), f = geom.gram_radius, dictionary.shape[-1]
  grid = (2 * mh + 1, 2 * mw + 1)
  # A 'valid' problem on an image of size 2m·s + k has exactly this code grid.
  impulse_geom = Geometry(
      image_hw=tuple(2 * m * s + k for m, s, k in zip(geom.gram_radius, geom.stride, geom.kernel_hw)),
      kernel_hw=geom.kernel_hw,
      stride=geom.stride,
      padding='valid',
  )
  impulses = jnp.zeros((f, *grid, f), dictionary.dtype)
  impulses = impulses.at[jnp.arange(f), mh, mw, jnp.arange(f)].set(1.0)
  response = gram(impulses, dictionary, impulse_geom)  # (F_in, gh, gw, F_out)
  # lateral(a)[p] = Σ_d a[p + d] K[m + d]; an impulse at the centre gives
  # response[p] = K[2m − p], hence the spatial flip.
  kernel = jnp.flip(response, axis=(1, 2)).transpose(1, 2, 0, 3)
  return kernel.at[mh, mw].add(-jnp.diag(atom_sq_norms(dictionary)))


def lateral_with_kernel(codes: jax.Array, kernel: jax.Array) -> jax.Array:
  """G ⋆ a as one stride-1 'same' correlation with the precomputed kernel."""
  mh, mw = kernel.shape[0] // 2, kernel.shape[1] // 2
  return jax.lax.conv_general_dilated(
      codes,
      kernel,
      window_strides=(1, 1),
      padding=((mh, mh), (mw, mw)),
      dimension_numbers=_DIMS,
      precision=matmul_precision(),
  )


def _tap_window(geom: Geometry, i: int, j: int):
  """Canvas rows/columns that kernel tap (i, j) touches, one per code position."""
  (hc, wc), (sh, sw) = geom.code_hw, geom.stride
  return (slice(None), slice(i, i + sh * (hc - 1) + 1, sh), slice(j, j + sw * (wc - 1) + 1, sw))


def synthesis_gemm(codes: jax.Array, dictionary: jax.Array, geom: Geometry) -> jax.Array:
  """Φ a as one GEMM (codes × taps) and a col2im of shifted adds.

  Same numbers as :func:`synthesis`. XLA:CPU runs convolutions inside a
  compiled loop body several times slower than outside; GEMMs and slices
  keep their speed, which makes this the fast form for few input channels.
  """
  kh, kw, _, _ = dictionary.shape
  (hc, wc), (sh, sw), (height, width) = geom.code_hw, geom.stride, geom.canvas_hw
  columns = jnp.einsum('nyxf,ijcf->nyxijc', codes, dictionary, precision=matmul_precision())
  # Tap (0, 0) placed by padding (so the canvas inherits the codes' sharding),
  # the other taps added into their strided windows.
  canvas = jax.lax.pad(columns[:, :, :, 0, 0, :], jnp.zeros((), codes.dtype), (
      (0, 0, 0), (0, height - sh * (hc - 1) - 1, sh - 1), (0, width - sw * (wc - 1) - 1, sw - 1),
      (0, 0, 0)))
  for i in range(kh):
    for j in range(kw):
      if i or j:
        canvas = canvas.at[_tap_window(geom, i, j)].add(columns[:, :, :, i, j, :])
  return canvas


def analysis_gemm(canvas: jax.Array, dictionary: jax.Array, geom: Geometry) -> jax.Array:
  """Φᵀ r as an im2col and one GEMM (same numbers as :func:`analysis`)."""
  kh, kw, c, f = dictionary.shape
  patches = jnp.stack(
      [canvas[_tap_window(geom, i, j)] for i in range(kh) for j in range(kw)], axis=3)
  return jnp.einsum('nyxpc,pcf->nyxf', patches, dictionary.reshape(kh * kw, c, f),
                    precision=matmul_precision())


def lateral_gemm(codes, dictionary, geom):
  """(ΦᵀΦ − diag‖ω‖²) a through GEMMs instead of convolutions."""
  gram_codes = analysis_gemm(synthesis_gemm(codes, dictionary, geom), dictionary, geom)
  return gram_codes - atom_sq_norms(dictionary) * codes


def _smooth_size(n: int) -> int:
  """Smallest integer ≥ n whose prime factors are 2, 3 and 5 (fast FFT sizes)."""
  size = n
  while True:
    rest = size
    for p in (2, 3, 5):
      while rest % p == 0:
        rest //= p
    if rest == 1:
      return size
    size += 1


def fft_radius(geom: Geometry) -> tuple[int, int]:
  """Gram radius clipped to H' − 1: wider taps never meet a code."""
  return tuple(min(m, h - 1) for m, h in zip(geom.gram_radius, geom.code_hw))


def fft_shape(geom: Geometry) -> tuple[int, int]:
  """FFT grid S ≥ H' + m per axis (no wrap-around onto the codes), 5-smooth."""
  return tuple(_smooth_size(h + m) for h, m in zip(geom.code_hw, fft_radius(geom)))


def gram_spectrum(kernel: jax.Array, geom: Geometry) -> jax.Array:
  """K̂ = rfft2 of the flipped gram kernel placed at offsets mod S.

  ``kernel`` is :func:`gram_kernel`'s ``(2m_h+1, 2m_w+1, F, F)``; returns
  the complex ``(S_h, S_w//2 + 1, F, F)`` spectrum used by
  :func:`lateral_fft`.
  """
  (mh, mw), (rh, rw) = geom.gram_radius, fft_radius(geom)
  sh, sw = fft_shape(geom)
  # Index i of the flipped, clipped kernel holds K'[i − r] = K[m − i + r].
  flipped = jnp.flip(kernel[mh - rh:mh + rh + 1, mw - rw:mw + rw + 1], axis=(0, 1))
  placed = jnp.pad(flipped, ((0, sh - 2 * rh - 1), (0, sw - 2 * rw - 1), (0, 0), (0, 0)))
  # Rolling by −r moves offset e = i − r to index e mod S.
  placed = jnp.roll(placed, (-rh, -rw), axis=(0, 1))
  return jnp.fft.rfft2(placed, axes=(0, 1))


def lateral_fft(codes: jax.Array, spectrum: jax.Array, geom: Geometry) -> jax.Array:
  """G ⋆ a by real FFTs: same numbers as :func:`lateral_with_kernel` up to rounding."""
  (hc, wc), (sh, sw) = geom.code_hw, fft_shape(geom)
  padded = jnp.pad(codes, ((0, 0), (0, sh - hc), (0, sw - wc), (0, 0)))
  product = jnp.einsum('nuvf,uvfg->nuvg', jnp.fft.rfft2(padded, axes=(1, 2)), spectrum,
                       precision=matmul_precision())
  return jnp.fft.irfft2(product, s=(sh, sw), axes=(1, 2))[:, :hc, :wc]


def lateral_flops(geom: Geometry, channels: int, features: int) -> dict[str, int]:
  """Multiply-accumulates per sample and step of each lateral formulation.

  'recon' is also the count of 'gemm'. For 'fft', a real FFT of n points is
  taken as ≈ 1.25·n·log₂n real MACs (half of a complex one's 5·n·log₂n
  flops), one forward and one inverse per atom, plus 4 real MACs per complex
  MAC of the per-frequency F × F products.
  """
  (hc, wc), (kh, kw) = geom.code_hw, geom.kernel_hw
  mh, mw = geom.gram_radius
  sh, sw = fft_shape(geom)
  n = sh * sw
  return {
      'recon': 2 * hc * wc * features * channels * kh * kw,
      'gram': hc * wc * features * features * (2 * mh + 1) * (2 * mw + 1),
      'fft': round(2.5 * features * n * math.log2(max(n, 2)))
             + 4 * sh * (sw // 2 + 1) * features * features,
  }


def as_conv(x: jax.Array, dictionary: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Dense problem (x: (N, D), Ω: (D, F)) as a 1×1 convolution on a 1×1 image."""
  return x[:, None, None, :], dictionary[None, None, :, :]
