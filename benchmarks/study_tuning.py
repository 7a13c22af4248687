"""Learning-rate selection for ``dfa-engine study`` on a validation split.

Trains the float reference (``dfa_engine.nn.NumpyMLP``, batch-1 SGD, samples in order) on the
first 3,000 MNIST-5k training samples and reports validation accuracy per epoch on the last
1,000 training samples (the test set is never used). Each argument is a Python statement
calling ``run(layers, methods, feedback, lr_shifts[, activation])``, e.g.::

    python benchmarks/study_tuning.py "for s in (5, 6, 7): run([784,128,10], ['bp'], 'sp1', [s, s])"

The grids actually run, and their output, are in ``benchmarks/results/study_tuning_log.txt``;
the choice (best validation accuracy after epoch 10) is ``dfa_engine.study.HYPERPARAMETERS``
and ``dfa_engine.study.ACTIVATION``. Options tried and not adopted (second round of the log):
``act="brelu", cap=c`` (ReLU clipped at ``c``), ``zero_out=True`` (zero-initialised output
layer) and ``decay=N`` (learning rates halved every ``N`` epochs).
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


def run(layers, methods, fb, shifts, act="relu", epochs=10, cap=1.0, zero_out=False, decay=0):
    cfg = default_config().with_(layers=tuple(layers), methods=tuple(methods), feedback=FB[fb],
                                 lr_shift=tuple(shifts), activation="relu" if act == "brelu" else act)
    m = NumpyMLP.from_config(cfg)
    if act == "brelu":   # exploration only: a ReLU clipped at cap
        m._act = lambda a: (np.clip(a, 0.0, cap), (a > 0) & (a < cap))
    if zero_out:
        m.W[-1][:] = 0.0
    base_lr = list(m.lr)
    curve, t = [], time.time()
    with np.errstate(all="ignore"):
        try:
            for ep in range(epochs):
                if decay:
                    m.lr = [lr * 2.0 ** -(ep // decay) for lr in base_lr]
                m.train_epoch(Xtr, ytr)
                curve.append(round(m.evaluate(Xva, yva), 3))
        except FloatingPointError:
            curve.append(None)
    h1 = float(np.abs(m._act(Xva[:200] @ m.W[0].T + m.b[0])[0]).mean())
    print(layers[1:-1], act, methods, fb, shifts, curve, "h1mean %.2f" % h1, f"{time.time() - t:.0f}s", flush=True)


if __name__ == "__main__":
    for spec in sys.argv[1:]:
        exec(spec)
