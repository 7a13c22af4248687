"""Hyperparameter selection for the CNN entries of ``dfa-engine study --cnn``, on a validation split.

Trains :class:`dfa_engine.cnn.CNN` (mini-batch 16, plain SGD, samples in order) on the first
3,000 MNIST-5k training samples and measures accuracy on the last 1,000 training samples
(the test set is never used), after ``EPOCHS`` epochs. Phase 1 picks the structure of the
sparse dilated feedback (dilation ``d``, taps ``k``, groups ``G``) on the 4-conv hybrid;
phase 2 picks, per network and method, the activation, the learning rate and the feedback
scale. The output is in ``benchmarks/results/study_cnn_tuning_log.txt``; the choice (best
validation accuracy, ties to the earlier grid point) is ``dfa_engine.study_cnn.HYPERPARAMETERS``.

    nice -n 5 .venv/bin/python benchmarks/study_cnn_tuning.py phase1
    nice -n 5 .venv/bin/python benchmarks/study_cnn_tuning.py phase2 "(dict(d=2, k=1, groups=2),)"
    nice -n 5 .venv/bin/python benchmarks/study_cnn_tuning.py phase2 "(dict(d=2, k=1, groups=2), ('2conv',), ('hybrid',))"

(The first phase-2 run used the 2-conv net's single module for its hybrid, i.e. BP everywhere;
the last line reruns that entry with ``HYBRID_MODULES``.) Dense DFA (``dfa``) ignores the
sparse structure.
"""

import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from dfa_engine.cnn import CNN, CNNConfig, FeedbackSpec  # noqa: E402
from dfa_engine.data import load_dataset  # noqa: E402
from dfa_engine.study_cnn import HYBRID_MODULES, NETWORKS  # noqa: E402

torch.set_num_threads(1)
EPOCHS = 3
ds = load_dataset("mnist5k")
X = torch.tensor(ds.x_train, dtype=torch.float32).reshape(-1, 1, 28, 28)
Y = torch.tensor(ds.y_train)
Xtr, Ytr, Xva, Yva = X[:3000], Y[:3000], X[3000:], Y[3000:]


def run(net_name, method, lr, scale=1.0, act="relu", epochs=EPOCHS, **fb):
    spec, modules = NETWORKS[net_name]
    if method == "hybrid":
        modules = HYBRID_MODULES[net_name]
    fbs = FeedbackSpec(kind=fb.pop("kind", "sparse_dilated"), scale=scale, **fb)
    cfg = CNNConfig(spec=spec, modules=modules, method=method, lr=lr, activation=act, feedback=fbs)
    net = CNN(cfg)
    t = time.time()
    curve = []
    for _ in range(epochs):
        loss = net.train_epoch(Xtr, Ytr)
        curve.append(round(net.evaluate(Xva, Yva), 4) if loss == loss else 0.0)
    print(f"{net_name} {method} lr={lr} scale={scale} act={act} fb={fbs.kind},d={fbs.d},k={fbs.k},G={fbs.groups} "
          f"val={curve} {time.time() - t:.1f}s", flush=True)
    return curve[-1]


def phase1():
    for d in (1, 2, 4):
        for k in (1, 2):
            for g in (1, 2):
                for scale in (1e-3, 1e-4):
                    run("4conv", "hybrid", 0.1, scale, "hardtanh", d=d, k=k, groups=g)


def phase2(fb, nets=tuple(NETWORKS), methods=("bp", "dfa", "dfa_sparse_dilated", "module_a", "module_b", "hybrid")):
    best = {}
    for net_name in nets:
        for method in methods:
            scales = (1.0,) if method == "bp" else (1e-2, 1e-3, 1e-4)
            res = []
            for act in ("relu", "hardtanh"):
                for lr in (0.05, 0.1, 0.2):
                    for scale in scales:
                        res.append((run(net_name, method, lr, scale, act, **dict(fb)), act, lr, scale))
            top = max(res, key=lambda r: r[0])
            best[(net_name, method)] = top
            print("BEST", net_name, method, top, flush=True)
    for k, v in best.items():
        print("BEST", k, v)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "phase2"
    if what == "phase1":
        phase1()
    else:
        phase2(*eval(sys.argv[2])) if len(sys.argv) > 2 else phase2({})
