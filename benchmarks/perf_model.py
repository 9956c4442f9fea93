"""A roofline model of Sparse-Guard's cost: the numbers of docs/performance.md.

    python benchmarks/perf_model.py [--json-out FILE]

Per image and LCA step, for both SG layers and the 'recon' and 'fft'
lateral forms: FLOPs (2 × the multiply-adds of
:func:`mi_jax.lca.operators.lateral_flops`), bytes moved (the model below),
their ratio (arithmetic intensity) and the roofline time
``max(FLOPs / peak FLOP/s, bytes / peak bandwidth)`` on each machine of
:data:`MACHINES`. Then SG Table 1 for MNIST at paper scale: every sparse
point's image-steps (training passes × steps × the backprop multiplier, plus
the forward passes of the attack and the evaluation) at the roofline, and
the floor that per-iteration latency sets on a GPU at the paper's batch 32.

The byte model (float32, 4 bytes; complex64, 8): every operation of one LCA
iteration reads its inputs from and writes its output to memory once, and
the elementwise update u ← u + η(b − u − G a), a = T(u) is one fused
kernel (reads u, b, G a; writes u, a). 'recon': synthesis reads a, writes
the canvas; analysis reads the canvas, writes Φᵀ Φ a; then the update.
'gram': one convolution reads a and the (2m+1)² F² kernel (amortised over
``batch`` images) and writes G a; then the update.
'fft': the zero-padded rfft2 reads a and writes its spectrum, the
per-frequency F × F product reads it and writes the product (the kernel's
spectrum is read once per batch, amortised over ``batch`` images), irfft2
reads that and writes the S × S × F result; then the update. Real kernels
fuse some of this, so the bytes are an upper estimate and the roofline
times an upper bound on speed (a lower bound on time) for this data flow.

Backprop through the loop with ``grad='checkpoint'``: the forward pass, its
recomputation segment by segment, and the backward pass (gradients w.r.t.
the layer's input only: a Hebbian or frozen dictionary gets none), each
≈ one forward step's cost: 3 step-costs per step. A layer whose input
needs no gradient (SG's first layer: nothing trainable before it, a frozen
dictionary) runs forward only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mi_jax.lca import operators  # noqa: E402

FLOAT = 4
COMPLEX = 8
LATERALS = ('recon', 'gram', 'fft')


@dataclasses.dataclass(frozen=True)
class Layer:
  """One convolutional sparse coding layer: (H, W, C) → F atoms of k × k, stride 1, 'same'."""
  name: str
  hw: tuple[int, int]
  channels: int
  features: int
  kernel: int = 5

  @property
  def geometry(self) -> operators.Geometry:
    return operators.Geometry(self.hw, (self.kernel, self.kernel), (1, 1), 'same')


# SG's MNIST layers (the SG code: 16 then 28 atoms of 5×5).
SG_LAYERS = (Layer('SG layer 1', (28, 28), 1, 16), Layer('SG layer 2', (28, 28), 16, 28))


@dataclasses.dataclass(frozen=True)
class Machine:
  """Published peaks (dense, no sparsity). ``flops``: precision → FLOP/s."""
  name: str
  flops: dict
  bandwidth: float  # bytes/s
  note: str = ''


MACHINES = (
    # The 2-vCPU machine these numbers are measured on: Intel Xeon (Sapphire
    # Rapids flags: AVX-512 with FP16/BF16); 2 vCPUs are most likely the two
    # hyperthreads of one core, so one core's peak: 2 FMA units × 16 float32
    # lanes × 2 FLOPs × ~2.5 GHz (assumed; the VM does not report it).
    # Bandwidth: an assumed ~20 GB/s share of the socket's.
    Machine('this CPU (2 vCPUs)', {'float32': 160e9}, 20e9, 'assumed peaks; see the comment'),
    Machine('NVIDIA H100 SXM', {'float32': 67e12, 'tf32': 495e12, 'bf16': 989e12}, 3.35e12),
    Machine('NVIDIA H200', {'float32': 67e12, 'tf32': 495e12, 'bf16': 989e12}, 4.8e12),
    # float32 convolutions on the MXU at HIGHEST precision take ~6 bf16 passes.
    Machine('TPU v5e (1 chip)', {'float32': 197e12 / 6, 'bf16': 197e12}, 819e9),
)


def step_bytes(layer: Layer, lateral: str, batch: int = 32) -> int:
  """Bytes moved per image and LCA step (the module docstring's model)."""
  geom = layer.geometry
  (hc, wc), (ch, cw) = geom.code_hw, geom.canvas_hw
  codes = hc * wc * layer.features * FLOAT
  update = 5 * codes  # reads u, b, G a; writes u, a
  if lateral == 'recon':
    canvas = ch * cw * layer.channels * FLOAT
    return codes + canvas + canvas + codes + update
  if lateral == 'gram':
    (mh, mw) = geom.gram_radius
    kernel = (2 * mh + 1) * (2 * mw + 1) * layer.features ** 2 * FLOAT // batch
    return codes + kernel + codes + update
  if lateral == 'fft':
    sh, sw = operators.fft_shape(geom)
    spectrum = sh * (sw // 2 + 1) * layer.features * COMPLEX
    kernel = sh * (sw // 2 + 1) * layer.features * layer.features * COMPLEX // batch
    return codes + spectrum + (spectrum + kernel + spectrum) + (spectrum + sh * sw * layer.features * FLOAT) + update
  raise ValueError(f"lateral must be 'recon', 'gram' or 'fft', got {lateral!r}")


def step_flops(layer: Layer, lateral: str) -> int:
  """FLOPs per image and LCA step: 2 × multiply-adds of the lateral operator, plus ~8 per code for the update."""
  macs = operators.lateral_flops(layer.geometry, layer.channels, layer.features)[lateral]
  hc, wc = layer.geometry.code_hw
  return 2 * macs + 8 * hc * wc * layer.features


def roofline_seconds(flops: float, nbytes: float, machine: Machine, precision: str = 'float32') -> float:
  return max(flops / machine.flops[precision], nbytes / machine.bandwidth)


def step_table(batch: int = 32) -> list[dict]:
  rows = []
  for layer in SG_LAYERS:
    for lateral in LATERALS:
      flops, nbytes = step_flops(layer, lateral), step_bytes(layer, lateral, batch)
      row = {'layer': layer.name, 'lateral': lateral, 'mflop': flops / 1e6, 'kbytes': nbytes / 1e3,
             'intensity': flops / nbytes}
      for machine in MACHINES:
        for precision in machine.flops:
          row[f'{machine.name} {precision} µs'] = 1e6 * roofline_seconds(flops, nbytes, machine, precision)
      rows.append(row)
  return rows


@dataclasses.dataclass(frozen=True)
class PaperScale:
  """SG Table 1, MNIST, at the paper's sizes (configs/sparse_guard_mnist.py:paper)."""
  private: int = 49_000  # 70 % of MNIST's 70,000
  heldout: int = 21_000
  epochs: int = 25
  n_steps: int = 500
  batch: int = 32
  guard_points: int = 6  # λ ∈ {0.1, 0.25, 0.5} × 2 settings
  standard_points: int = 2  # Sparse-Standard × 2 settings


def point_image_steps(scale: PaperScale, *, backprop_layers: tuple[bool, ...]) -> list[float]:
  """Per layer: image-steps of one point (training passes plus the forward
  passes over the private and held-out sets), in forward-step units."""
  passes = scale.epochs * scale.private
  forward_only = scale.private + scale.heldout
  return [scale.n_steps * (passes * (3 if backprop else 1) + forward_only) for backprop in backprop_layers]


def table1_seconds(machine: Machine, precision: str, lateral: str, scale: PaperScale = PaperScale()) -> float:
  """Roofline seconds of the sparse points of SG Table 1 (the rest is minutes);
  ``lateral``: one form for both layers, or 'auto' for what ``lateral='auto'``
  runs on an accelerator (recon for layer 1, gram for layer 2)."""
  layer1, layer2 = SG_LAYERS

  def cost(layer, image_steps):
    form = lateral if lateral != 'auto' else ('recon' if layer is layer1 else 'gram')
    return image_steps * roofline_seconds(step_flops(layer, form), step_bytes(layer, form, scale.batch),
                                          machine, precision)

  # Sparse-Guard: layer 1 frozen (forward only), layer 2 backpropagated
  # (the BatchNorm affine before it trains). Sparse-Standard: one layer-1
  # shaped layer whose dictionary trains by backprop (SG footnote 1).
  guard_1, guard_2 = point_image_steps(scale, backprop_layers=(False, True))
  (standard,) = point_image_steps(scale, backprop_layers=(True,))
  return (scale.guard_points * (cost(layer1, guard_1) + cost(layer2, guard_2))
          + scale.standard_points * cost(layer1, standard))


def latency_floor_seconds(seconds_per_iteration: float, scale: PaperScale = PaperScale()) -> float:
  """Table 1's sparse points when every LCA iteration costs at least
  ``seconds_per_iteration`` (kernel launches and the loop's bookkeeping),
  whatever the batch: one iteration per step of every loop of every batch."""
  batches = scale.epochs * scale.private / scale.batch
  eval_batches = (scale.private + scale.heldout) / scale.batch
  guard = batches * scale.n_steps * (1 + 3) + eval_batches * scale.n_steps * 2
  standard = batches * scale.n_steps * 3 + eval_batches * scale.n_steps
  return seconds_per_iteration * (scale.guard_points * guard + scale.standard_points * standard)


def markdown(rows: list[dict], columns: list[str]) -> str:
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  for row in rows:
    lines.append('| ' + ' | '.join(f'{row[c]:.3g}' if isinstance(row[c], float) else str(row[c])
                                   for c in columns) + ' |')
  return '\n'.join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--json-out', default=None)
  args = parser.parse_args(argv)
  rows = step_table()
  print('Per image and LCA step (batch 32 for the fft kernel spectrum):\n')
  print(markdown(rows, list(rows[0])))
  table1 = []
  for machine in MACHINES:
    for precision in machine.flops:
      table1.append({'machine': machine.name, 'precision': precision,
                     **{f'{lateral} h': table1_seconds(machine, precision, lateral) / 3600
                        for lateral in LATERALS + ('auto',)}})
  print('\nSG Table 1, MNIST, paper scale: the sparse points at the roofline (hours):\n')
  print(markdown(table1, list(table1[0])))
  floors = [{'µs per LCA iteration': us, 'h': latency_floor_seconds(us * 1e-6) / 3600} for us in (10.0, 25.0, 50.0)]
  print('\nThe same at batch 32 when each LCA iteration costs at least (latency floor):\n')
  print(markdown(floors, list(floors[0])))
  if args.json_out:
    from mi_jax.utils.results import write_json_atomic
    write_json_atomic(args.json_out, {'steps': rows, 'table1': table1, 'latency_floors': floors}, overwrite=True)


if __name__ == '__main__':
  main()
