"""Hyperparameter selection for ``dfa-engine study --rnn``, on validation splits of the training sets.

For each task and entry of :data:`dfa_engine.study_rnn.ENTRIES`, trains on the first part of
the training set and measures the last part (the test set is never used):

* mnist5k: train on the first 3,000, validate on the last 1,000 training images, 5 epochs;
* digits: first 1,137 / last 300 training images, 10 epochs;
* adding: first 4,000 / last 1,000 training sequences, 5 epochs.

Grid: every entry gets every learning rate of ``LR_GRID``; entries with a fixed random
feedback matrix also get every scale of ``SCALE_GRID`` (BPTT, truncated BPTT and the
``W_hy^T`` broadcast have no scale). Two stages: the whole grid is screened with the short
schedule above, then the best ``FINALISTS`` grid points of the screen are trained again on
the same split for the study's full schedule (``STUDY_EPOCHS``), and the choice is the best
final validation accuracy (lowest MSE) of that second stage, ties to the better screen score.
The short screen alone picked rates that learn fast and then fall apart (``bptt_leaky`` on
mnist5k: lr 1.0, 89.0 % after 5 validation epochs, 70 % on test after 20). Output:
``benchmarks/results/study_rnn_tuning_log.txt``; the choice is copied into
``dfa_engine.study_rnn.HYPERPARAMETERS``.

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
FINALISTS = 3
STUDY_EPOCHS = 20      # dfa-engine study --rnn's default schedule


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
        # stable sort: equal screen scores keep grid order
        finalists = sorted(res, key=lambda r: -r[0])[:FINALISTS]
        final = []
        for rank, (_, lr, scale) in enumerate(finalists):
            t = time.time()
            cfg = config(task, entry, meta, lr=lr, scale=scale)
            _, curve, div = train(cfg, data, STUDY_EPOCHS)
            v = curve[-1]
            final.append(((v if acc else -v) if v == v else float("-inf"), -rank, lr, scale))
            print(f"{task} {entry} FINAL lr={lr} scale={scale} val={[round(c, 4) for c in curve]}"
                  f"{' diverged' if div else ''} {time.time() - t:.1f}s", flush=True)
        top = max(final)                       # ties to the better screen rank
        best[(task, entry)] = (top[2], top[3])
        print("BEST", task, entry, (top[0], top[2], top[3]), flush=True)
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
