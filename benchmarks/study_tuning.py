"""Learning-rate selection for ``dfa-engine study`` on a validation split.

Trains the float reference (``dfa_engine.nn.NumpyMLP``, batch-1 SGD, samples in order) on the
first 3,000 MNIST-5k training samples and reports validation accuracy per epoch on the last
1,000 training samples (the test set is never used). Each argument is a Python statement
calling ``run(layers, methods, feedback, lr_shifts[, activation])``, e.g.::

    python benchmarks/study_tuning.py "for s in (5, 6, 7): run([784,128,10], ['bp'], 'sp1', [s, s])"

The grids actually run, and their output, are in ``benchmarks/results/study_tuning_log.txt``;
the choice (best validation accuracy after epoch 10) is ``dfa_engine.study.HYPERPARAMETERS``.
"""

import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from dfa_engine.config import FeedbackConfig, default_config  # noqa: E402
from dfa_engine.data import load_dataset  # noqa: E402
from dfa_engine.nn import NumpyMLP  # noqa: E402

ds = load_dataset("mnist5k")
Xtr, ytr, Xva, yva = ds.x_train[:3000], ds.y_train[:3000], ds.x_train[3000:], ds.y_train[3000:]
FB = {"dense": FeedbackConfig(kind="dense", values="fixed", seed=1),
      "sp1": FeedbackConfig(kind="sparse", k=1, values="pm1", seed=1),
      "sp2": FeedbackConfig(kind="sparse", k=2, values="pm1", seed=1)}


def run(layers, methods, fb, shifts, act="relu", epochs=10):
    cfg = default_config().with_(layers=tuple(layers), methods=tuple(methods), feedback=FB[fb],
                                 lr_shift=tuple(shifts), activation=act)
    m = NumpyMLP.from_config(cfg)
    curve, t = [], time.time()
    with np.errstate(all="ignore"):
        try:
            for _ in range(epochs):
                m.train_epoch(Xtr, ytr)
                curve.append(round(m.evaluate(Xva, yva), 3))
        except FloatingPointError:
            curve.append(None)
    h1 = float(np.abs(m._act(Xva[:200] @ m.W[0].T + m.b[0])[0]).mean())
    print(layers[1:-1], act, methods, fb, shifts, curve, "h1mean %.2f" % h1, f"{time.time() - t:.0f}s", flush=True)


if __name__ == "__main__":
    for spec in sys.argv[1:]:
        exec(spec)
