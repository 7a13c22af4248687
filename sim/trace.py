"""Traces of every intermediate value, and the diff that names the first differing one.

A trace is a list of per-sample records ``{tensor name: int64 array}``. The golden model
writes one; a testbench builds another from what the RTL produced; :func:`first_difference`
names the first value where they disagree: sample, tensor, index and both values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Trace", "Difference", "first_difference"]


class Trace:
    def __init__(self, records=None):
        self.records: list[dict] = list(records or [])

    def append(self, record: dict):
        self.records.append({k: np.array(v, dtype=np.int64, copy=True) for k, v in record.items()})

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def save(self, path):
        """Save as ``.npz`` with keys ``"<sample>/<tensor>"``."""
        arrays = {f"{i}/{k}": v for i, rec in enumerate(self.records) for k, v in rec.items()}
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path) -> "Trace":
        with np.load(Path(path)) as data:
            by_sample: dict[int, dict] = {}
            for key in data.files:
                i, name = key.split("/", 1)
                by_sample.setdefault(int(i), {})[name] = data[key]
        return cls([by_sample[i] for i in sorted(by_sample)])


@dataclass(frozen=True)
class Difference:
    sample: int
    tensor: str
    index: tuple
    a: object
    b: object

    def __str__(self):
        idx = ",".join(str(i) for i in self.index)
        return f"first difference: sample {self.sample}, tensor {self.tensor}[{idx}]: {self.a} != {self.b}"


def first_difference(a, b, tensors=None):
    """The first differing value of two traces (or ``None`` if they agree).

    Samples are compared in order; within a sample, tensors in the order of ``a``'s record
    (the order of the computation), then elements in row-major order. A tensor present in
    one record only, a shape mismatch or a shorter trace is reported as a difference too.
    """
    ra = a.records if isinstance(a, Trace) else list(a)
    rb = b.records if isinstance(b, Trace) else list(b)
    for s in range(max(len(ra), len(rb))):
        if s >= len(ra) or s >= len(rb):
            return Difference(s, "(sample)", (), "present" if s < len(ra) else "missing",
                              "present" if s < len(rb) else "missing")
        names = [n for n in ra[s] if tensors is None or n in tensors]
        names += [n for n in rb[s] if n not in ra[s] and (tensors is None or n in tensors)]
        for name in names:
            if name not in ra[s] or name not in rb[s]:
                return Difference(s, name, (), "present" if name in ra[s] else "missing",
                                  "present" if name in rb[s] else "missing")
            x, y = np.asarray(ra[s][name]), np.asarray(rb[s][name])
            if x.shape != y.shape:
                return Difference(s, name, (), f"shape {x.shape}", f"shape {y.shape}")
            diff = np.flatnonzero(x.ravel() != y.ravel())
            if diff.size:
                idx = np.unravel_index(diff[0], x.shape) if x.ndim else ()
                return Difference(s, name, tuple(int(i) for i in idx),
                                  x.ravel()[diff[0]].item(), y.ravel()[diff[0]].item())
    return None
