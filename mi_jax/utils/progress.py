"""Console progress with an ETA that ignores the compile step."""

from __future__ import annotations

import sys
import time


class Progress:
  """``update(done)`` prints ``name step/total rate ETA``; the rate is measured
  from the first completed step on, so compilation does not skew it."""

  def __init__(self, name: str, total: int, *, start: int = 0, stream=sys.stdout):
    self.name, self.total, self.stream = name, total, stream
    self.first_done, self.first_time = None, None
    self.start = start

  def update(self, done: int, extra: str = '') -> None:
    now = time.perf_counter()
    if self.first_done is None:
      self.first_done, self.first_time = done, now
      eta = 'ETA after the next report'
    else:
      rate = (done - self.first_done) / max(now - self.first_time, 1e-9)
      remaining = (self.total - done) / rate if rate > 0 else float('inf')
      eta = f"{rate:.2f} steps/s, ETA {remaining / 60:.1f} min"
    print(f"[{self.name}] {done}/{self.total} {eta} {extra}".rstrip(), file=self.stream, flush=True)
