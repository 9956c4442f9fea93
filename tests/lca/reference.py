"""Float64 NumPy oracles written from the equations (torch NCHW semantics).

Independent of mi_jax's operators: explicit sliding windows, torch's conv2d /
conv_transpose2d index conventions, and lcapt's LCAConv2D loop as published
(lanl/lca-pytorch, lcapt/lca.py), re-derived here, not copied.
"""

import numpy as np


def conv2d(inputs, weights, stride, padding):
  """torch.nn.functional.conv2d: inputs (N, C, H, W), weights (O, C, kh, kw)."""
  (sh, sw), (ph, pw) = stride, padding
  x = np.pad(inputs, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
  kh, kw = weights.shape[2:]
  windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
  windows = windows[:, :, ::sh, ::sw]  # (N, C, H', W', kh, kw)
  return np.einsum('nchwij,ocij->nohw', windows, weights)


def conv_transpose2d(codes, weights, stride, padding, output_padding):
  """torch conv_transpose2d: codes (N, F, H', W'), weights (F, C, kh, kw)."""
  (sh, sw), (ph, pw), (oh, ow) = stride, padding, output_padding
  n, f, hc, wc = codes.shape
  _, c, kh, kw = weights.shape
  full = np.zeros((n, c, (hc - 1) * sh + kh + oh, (wc - 1) * sw + kw + ow))
  for y in range(hc):
    for x in range(wc):
      full[:, :, y * sh:y * sh + kh, x * sw:x * sw + kw] += np.einsum(
          'nf,fcij->ncij', codes[:, :, y, x], weights)
  return full[:, :, ph:full.shape[2] - ph, pw:full.shape[3] - pw]


def transfer(u, lam, threshold, nonneg):
  if threshold == 'soft':
    pos = np.maximum(u - lam, 0.0)
    return pos if nonneg else pos - np.maximum(-u - lam, 0.0)
  keep = u > lam if nonneg else np.abs(u) > lam
  return np.where(keep, u, 0.0)


def lcapt_normalize(x):
  dims = tuple(range(1, x.ndim))
  x = x - x.mean(axis=dims, keepdims=True)
  return x / (x.std(axis=dims, keepdims=True, ddof=1) + 1e-12)


def _lateral_pad(k, s):
  if k % 2:
    return (k - 1) // s * s
  return k - s if k % s == 0 else k // s * s


def lcapt_conv2d_forward(x, weights, *, lam, tau, n_steps, stride, padding='same',
                         threshold='soft', nonneg=True, normalize=True,
                         return_all=False):
  """LCAConv2D.forward on x (N, C, H, W), weights (F, C, kh, kw); float64."""
  x = np.asarray(x, np.float64)
  w = np.asarray(weights, np.float64)
  if normalize:
    x = lcapt_normalize(x)
  f, _, kh, kw = w.shape
  pad = (kh // 2, kw // 2) if padding == 'same' else (0, 0)
  drive = conv2d(x, w, stride, pad)
  lat_pad = (_lateral_pad(kh, stride[0]), _lateral_pad(kw, stride[1]))
  conns = conv2d(w, w, stride, lat_pad)  # (F, F, gh, gw)
  gh, gw = conns.shape[2:]
  conns[np.arange(f), np.arange(f), gh // 2, gw // 2] = 0.0
  surround = (int(np.ceil((gh - 1) / 2)), int(np.ceil((gw - 1) / 2)))
  u = np.zeros_like(drive)
  history = []
  for _ in range(n_steps):
    acts = transfer(u, lam, threshold, nonneg)
    history.append(acts)
    inhib = conv2d(acts, conns, (1, 1), surround)
    u = u + (1.0 / tau) * (drive - u - inhib)
  return np.stack(history) if return_all else acts


def dense_lca(x, dictionary, *, lam, tau, n_steps, threshold='soft', nonneg=True):
  """LCA on vectors: x (N, D), dictionary (D, F)."""
  x = np.asarray(x, np.float64)
  d = np.asarray(dictionary, np.float64)
  drive = x @ d
  conns = d.T @ d - np.diag(np.sum(d * d, axis=0))
  u = np.zeros_like(drive)
  for _ in range(n_steps):
    acts = transfer(u, lam, threshold, nonneg)
    u = u + (drive - u - acts @ conns) / tau
  return acts


def synthesis_matrix(weights_hwio, image_hw, stride, padding):
  """Φ as an explicit matrix (canvas pixels × codes), by unit impulses."""
  kh, kw, c, f = weights_hwio.shape
  w = np.transpose(weights_hwio, (3, 2, 0, 1)).astype(np.float64)
  pad = (kh // 2, kw // 2) if padding == 'same' else (0, 0)
  hc = (image_hw[0] + 2 * pad[0] - kh) // stride[0] + 1
  wc = (image_hw[1] + 2 * pad[1] - kw) // stride[1] + 1
  columns = []
  for index in range(f * hc * wc):
    code = np.zeros(f * hc * wc)
    code[index] = 1.0
    code = code.reshape(1, hc, wc, f).transpose(0, 3, 1, 2)
    columns.append(conv_transpose2d(code, w, stride, (0, 0), (0, 0)).transpose(0, 2, 3, 1).ravel())
  return np.stack(columns, axis=1), (hc, wc)
