"""Learning rates of the batch-1 RNN settings of ``dfa-engine study --rnn --fixed``, on a
validation split of the training set (the test set is never used).

The float study's rates (``docs/rnn.md``) were tuned for mini-batch 16 with gradient clipping and
tanh; the fixed-point engine trains one sequence at a time, without clipping, with hardtanh.
With the float study's sparse-feedback rates (readout 2^-7, recurrent 2^-10) the batch-1
curves jump by up to 10 points between epochs and two float runs of the same definition
(float32 and float64) end up to 8 points apart, too noisy to compare fixed point with float
within 1 point. This script trains the float32 twin (:func:`dfa_engine.study_rnn_fixed.float_twin`;
the golden model is not used for the choice) on the first 3,000 training images of mnist5k
(first 1,137 of digits) for 5 (10) epochs and validates on the rest, for every
``lr_shift = [base + S, base]`` of the grid, seeds 0 and 1. Choice: best mean validation
accuracy over the two seeds at the last epoch, ties to the earlier grid point. Output:
``benchmarks/results/study_rnn_fixed_tuning_log.txt``; the choice is copied into
``dfa_engine.study_rnn_fixed.SETTINGS``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_rnn_fixed_tuning.py mnist5k sparse
"""

import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dfa_engine.rnn_config import rnn_config_from_dict  # noqa: E402
from dfa_engine.sim.golden_rnn import GoldenRNN  # noqa: E402
from dfa_engine.study_rnn_fixed import engine_dict, float_twin, load  # noqa: E402

torch.set_num_threads(1)
SPLIT = {"mnist5k": (3000, 5), "digits": (1137, 10)}
BASES = (6, 7, 8)
SCALE_SHIFTS = (3, 5, 7)
SEEDS = (0, 1)


def tune(task, kind, log):
    n, epochs = SPLIT[task]
    best = None
    for base in BASES:
        for s in SCALE_SHIFTS:
            accs = []
            for seed in SEEDS:
                d = engine_dict(task, kind)
                d["training"].update(lr_shift=[base + s, base], seed=seed)
                cfg = rnn_config_from_dict(d)
                X, Y, _, _ = load(task, cfg.formats.input, False)
                fin = cfg.formats.input
                Xf = torch.as_tensor(fin.to_float(X), dtype=torch.float32)
                Yf = torch.as_tensor(Y)
                net = float_twin(cfg, GoldenRNN(cfg))
                for _ in range(epochs):
                    loss = net.train_epoch(Xf[:n], Yf[:n])
                accs.append(net.evaluate(Xf[n:], Yf[n:]) if loss == loss else 0.1)
            acc = float(np.mean(accs))
            line = f"{task} {kind} lr_shift [{base + s}, {base}] (base {base}, S {s}): val acc " + \
                   " ".join(f"{a:.3f}" for a in accs) + f" mean {acc:.3f}"
            print(line, flush=True)
            log.write(line + "\n")
            if best is None or acc > best[0]:
                best = (acc, base, s)
    line = f"CHOICE {task} {kind}: base {best[1]}, S {best[2]} (val acc {best[0]:.3f})"
    print(line, flush=True)
    log.write(line + "\n")


def main(argv):
    task, kind = argv[1], argv[2]
    path = "benchmarks/results/study_rnn_fixed_tuning_log.txt"
    t0 = time.perf_counter()
    with open(path, "a") as log:
        log.write(f"# {task} {kind}: first {SPLIT[task][0]} train / rest of the training set as validation, "
                  f"{SPLIT[task][1]} epochs, float32 twin, batch 1, seeds {SEEDS}\n")
        tune(task, kind, log)
        log.write(f"# {time.perf_counter() - t0:.0f} s\n")


if __name__ == "__main__":
    main(sys.argv)
