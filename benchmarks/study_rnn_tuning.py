"""Hyperparameter selection for ``dfa-engine study --rnn``, on validation splits of the training sets.

For each task and entry of :data:`dfa_engine.study_rnn.ENTRIES`, trains on the first part of
the training set and measures the last part (the test set is never used):

* mnist5k: train on the first 3,000, validate on the last 1,000 training images, 5 epochs;
* digits: first 1,137 / last 300 training images, 10 epochs;
* adding: first 4,000 / last 1,000 training sequences, 5 epochs.

Grid: every entry gets every learning rate of ``LR_GRID``; entries with a fixed random
feedback matrix also get every scale of ``SCALE_GRID`` (BPTT, truncated BPTT and the
``W_hy^T`` broadcast have no scale). Choice: best validation accuracy (lowest MSE), ties to
the earlier grid point. Output: ``benchmarks/results/study_rnn_tuning_log.txt``; the choice is
copied into ``dfa_engine.study_rnn.HYPERPARAMETERS``.

    nice -n 5 .venv/bin/python benchmarks/study_rnn_tuning.py mnist5k digits adding
    nice -n 5 .venv/bin/python benchmarks/study_rnn_tuning.py mnist5k --entries bptt_leaky,dfa_trace
"""

import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from dfa_engine.rnn import load_task  # noqa: E402
from dfa_engine.study_rnn import ENTRIES, FEEDBACK_KIND, LR_GRID, SCALE_GRID, config, train  # noqa: E402

torch.set_num_threads(1)
SPLIT = {"mnist5k": (3000, 5), "digits": (1137, 10), "adding": (4000, 5)}


def tune(task, entries=tuple(ENTRIES)):
    X, Y, _, _, meta = load_task(task)
    n, epochs = SPLIT[task]
    data = (X[:n], Y[:n], X[n:], Y[n:])
    acc = meta["loss"] == "xent"
    best = {}
    for entry in entries:
        scales = SCALE_GRID if FEEDBACK_KIND.get(entry) in ("dense", "sparse") else (1.0,)
        res = []
        for lr in LR_GRID:
            for scale in scales:
                t = time.time()
                cfg = config(task, entry, meta, lr=lr, scale=scale)
                _, curve, div = train(cfg, data, epochs)
                v = curve[-1]
                score = (v if acc else -v) if v == v else float("-inf")
                res.append((score, lr, scale))
                print(f"{task} {entry} lr={lr} scale={scale} val={[round(c, 4) for c in curve]}"
                      f"{' diverged' if div else ''} {time.time() - t:.1f}s", flush=True)
        top = max(res, key=lambda r: r[0])     # max keeps the first of equal scores
        best[(task, entry)] = (top[1], top[2])
        print("BEST", task, entry, top, flush=True)
    print("HYPERPARAMETERS", {k: v for k, v in best.items()}, flush=True)
    return best


if __name__ == "__main__":
    args = sys.argv[1:]
    entries = tuple(ENTRIES)
    if "--entries" in args:          # tune only these (the log is appended to by hand)
        i = args.index("--entries")
        entries = tuple(args[i + 1].split(","))
        unknown = [e for e in entries if e not in ENTRIES]
        if unknown:
            sys.exit(f"--entries: unknown entries {unknown}; known: {', '.join(ENTRIES)}")
        del args[i:i + 2]
    for task in args or ["mnist5k", "digits", "adding"]:
        tune(task, entries)
