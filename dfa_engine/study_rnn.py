"""The RNN entries of the accuracy study: ``dfa-engine study --rnn`` (definitions: ``docs/rnn.md``).

An Elman RNN or the leaky cell (tanh, one recurrent layer, readout from the last hidden state;
``dfa_engine.rnn``) on one of three
tasks (:func:`dfa_engine.rnn.load_task`): row-by-row MNIST-5k (28 steps x 28 inputs, the MLP
study's split), row-by-row sklearn digits (8 x 8) and the adding problem (T = 50, MSE). Every
entry starts from the same initial weights (seed 0) and is trained with plain SGD, mini-batch
16, samples in data-set order, global-norm gradient clipping at 1.0, for the same number of
epochs. The entries (:data:`ENTRIES`) are the training methods of :mod:`dfa_engine.rnn`:
BPTT, truncated BPTT, DFA (dense / sparse feedback, three projection windows), the hybrids,
time modules and the output-weight broadcast; on the leaky cell BPTT, DFA to every step and
DFA through each neuron's eligibility trace (dense, sparse). The learning rate and the feedback scale per
(task, entry) were chosen by ``benchmarks/study_rnn_tuning.py`` on a validation split carved
from the training set (never the test set), the same grid for every entry.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

#: entry -> (label, RNNConfig overrides). ``None`` values are filled per task (module length).
ENTRIES = {
    "bptt": ("BPTT (full)", dict(method="bptt")),
    "tbptt4": ("truncated BPTT, k=4", dict(method="tbptt", bptt_steps=4)),
    "dfa": ("DFA dense, every step", dict(method="dfa", window="all")),
    "dfa_last": ("DFA dense, last step only", dict(method="dfa", window="last")),
    "dfa_w4": ("DFA dense, last 4 steps", dict(method="dfa", window=4)),
    "dfa_sparse": ("sparse DFA k=1, every step", dict(method="dfa_sparse", window="all")),
    "dfa_sparse_w4": ("sparse DFA k=1, last 4 steps", dict(method="dfa_sparse", window=4)),
    "hybrid1": ("hybrid: W_hy^T e at T + sparse DFA", dict(method="hybrid", bptt_steps=1, window="all")),
    "hybrid4": ("hybrid: TBPTT 4 + sparse DFA", dict(method="hybrid", bptt_steps=4, window="all")),
    "module": ("time modules + sparse DFA", dict(method="module", bptt_steps=None)),
    "dfa_wout": ("W_hy^T e to every step", dict(method="dfa", window="all")),
    # the leaky cell (per-neuron leak 2^-s): its BPTT, DFA to every step, and e-prop (DFA
    # through each neuron's eligibility trace), dense and sparse
    "bptt_leaky": ("BPTT (full), leaky cell", dict(method="bptt", cell="leaky")),
    "dfa_leaky": ("DFA dense, every step, leaky cell", dict(method="dfa", window="all", cell="leaky")),
    "dfa_trace": ("DFA dense, eligibility traces, leaky cell", dict(method="dfa", window="trace", cell="leaky")),
    "dfa_sparse_trace": ("sparse DFA k=1, eligibility traces, leaky cell",
                         dict(method="dfa_sparse", window="trace", cell="leaky")),
    # controls: the same two leaky-cell rules with the output layer's own W_hy^T in place of
    # the random B (what is lost to the random feedback, and what to ignoring W_hh in time)
    "wout_leaky": ("W_hy^T e to every step, leaky cell", dict(method="dfa", window="all", cell="leaky")),
    "wout_trace": ("W_hy^T e through eligibility traces, leaky cell",
                   dict(method="dfa", window="trace", cell="leaky")),
}
#: Feedback per entry (kind); sparse entries use k = 1, +-1 (the engine's default feedback).
FEEDBACK_KIND = {"dfa": "dense", "dfa_last": "dense", "dfa_w4": "dense", "dfa_sparse": "sparse",
                 "dfa_sparse_w4": "sparse", "hybrid1": "sparse", "hybrid4": "sparse", "module": "sparse",
                 "dfa_wout": "output", "dfa_leaky": "dense", "dfa_trace": "dense", "dfa_sparse_trace": "sparse",
                 "wout_leaky": "output", "wout_trace": "output"}
#: BPTT entries and the cell each one trains (the yardsticks of :func:`acceptance`).
BPTT_ENTRIES = {"bptt": "elman", "bptt_leaky": "leaky"}
HIDDEN = {"mnist5k": 128, "digits": 64, "adding": 64}
MODULE_STEPS = {"mnist5k": 7, "digits": 4, "adding": 10}
BATCH_SIZE, CLIP, ACTIVATION, SPARSE_K = 16, 1.0, "tanh", 1
#: Grid of benchmarks/study_rnn_tuning.py: every entry gets the lr axis; entries with a fixed
#: random feedback also get the scale axis (BPTT and W_hy^T have no scale).
LR_GRID = (0.03, 0.1, 0.3, 1.0)
SCALE_GRID = (1.0, 0.1, 0.01)
#: (task, entry) -> (lr, feedback scale): filled from benchmarks/results/study_rnn_tuning_log.txt.
HYPERPARAMETERS: dict = {
    ('mnist5k', 'bptt'): (0.3, 1.0),                    # val acc 0.904
    ('mnist5k', 'tbptt4'): (0.1, 1.0),                  # val acc 0.685
    ('mnist5k', 'dfa'): (0.3, 0.1),                     # val acc 0.652
    ('mnist5k', 'dfa_last'): (1.0, 0.01),               # val acc 0.603
    ('mnist5k', 'dfa_w4'): (0.3, 0.01),                 # val acc 0.699
    ('mnist5k', 'dfa_sparse'): (0.1, 0.1),              # val acc 0.546
    ('mnist5k', 'dfa_sparse_w4'): (0.1, 0.1),           # val acc 0.623
    ('mnist5k', 'hybrid1'): (0.3, 0.01),                # val acc 0.656
    ('mnist5k', 'hybrid4'): (0.3, 0.01),                # val acc 0.761
    ('mnist5k', 'module'): (0.1, 0.1),                  # val acc 0.876
    ('mnist5k', 'dfa_wout'): (0.03, 1.0),               # val acc 0.507
    ('mnist5k', 'bptt_leaky'): (0.3, 1.0),              # val acc 0.945
    ('mnist5k', 'dfa_leaky'): (0.3, 0.1),               # val acc 0.851
    ('mnist5k', 'dfa_trace'): (0.3, 0.1),               # val acc 0.805
    ('mnist5k', 'dfa_sparse_trace'): (0.3, 1.0),        # val acc 0.847
    ('digits', 'bptt'): (0.3, 1.0),                     # val acc 0.980
    ('digits', 'tbptt4'): (0.1, 1.0),                   # val acc 0.947
    ('digits', 'dfa'): (0.3, 1.0),                      # val acc 0.823
    ('digits', 'dfa_last'): (0.3, 0.1),                 # val acc 0.917
    ('digits', 'dfa_w4'): (0.3, 0.1),                   # val acc 0.877
    ('digits', 'dfa_sparse'): (0.3, 0.1),               # val acc 0.767
    ('digits', 'dfa_sparse_w4'): (0.1, 0.1),            # val acc 0.870
    ('digits', 'hybrid1'): (0.1, 0.1),                  # val acc 0.940
    ('digits', 'hybrid4'): (0.3, 0.1),                  # val acc 0.953
    ('digits', 'module'): (0.3, 0.01),                  # val acc 0.960
    ('digits', 'dfa_wout'): (0.1, 1.0),                 # val acc 0.730
    ('digits', 'bptt_leaky'): (1.0, 1.0),               # val acc 0.957
    ('digits', 'dfa_leaky'): (1.0, 0.1),                # val acc 0.867
    ('digits', 'dfa_trace'): (0.3, 1.0),                # val acc 0.930
    ('digits', 'dfa_sparse_trace'): (0.3, 1.0),         # val acc 0.867
    ('adding', 'bptt'): (0.1, 1.0),                     # val MSE 0.1666
    ('adding', 'tbptt4'): (0.1, 1.0),                   # val MSE 0.1680
    ('adding', 'dfa'): (0.03, 1.0),                     # val MSE 0.1710
    ('adding', 'dfa_last'): (0.1, 0.1),                 # val MSE 0.1686
    ('adding', 'dfa_w4'): (0.1, 0.01),                  # val MSE 0.1687
    ('adding', 'dfa_sparse'): (0.03, 0.01),             # val MSE 0.1692
    ('adding', 'dfa_sparse_w4'): (0.1, 0.01),           # val MSE 0.1684
    ('adding', 'hybrid1'): (0.03, 0.01),                # val MSE 0.1687
    ('adding', 'hybrid4'): (0.03, 1.0),                 # val MSE 0.1678
    ('adding', 'module'): (0.1, 0.01),                  # val MSE 0.1666
    ('adding', 'dfa_wout'): (0.1, 1.0),                 # val MSE 0.1697
    ('adding', 'bptt_leaky'): (0.1, 1.0),               # val MSE 0.1649
    ('adding', 'dfa_leaky'): (0.03, 1.0),               # val MSE 0.1680
    ('adding', 'dfa_trace'): (0.1, 0.1),                # val MSE 0.1664
    ('adding', 'dfa_sparse_trace'): (0.1, 0.1),         # val MSE 0.1666
    ('mnist5k', 'wout_leaky'): (1.0, 1.0),              # val acc 0.822
    ('mnist5k', 'wout_trace'): (1.0, 1.0),              # val acc 0.919
    ('digits', 'wout_leaky'): (0.3, 1.0),               # val acc 0.810
    ('digits', 'wout_trace'): (0.3, 1.0),               # val acc 0.943
    ('adding', 'wout_leaky'): (0.1, 1.0),               # val MSE 0.1607
    ('adding', 'wout_trace'): (0.1, 1.0),               # val MSE 0.1655
}


def leak_max_shift_for(steps: int) -> int:
    """The study's leaky cell: time constants from one step up to about the sequence, 2^s <= T."""
    return max(0, int(steps).bit_length() - 1)


def config(task: str, entry: str, meta: dict, lr=None, scale=None, storage="table"):
    from .rnn import RNNConfig, RNNFeedback

    over = dict(ENTRIES[entry][1])
    if over.get("bptt_steps", 0) is None:
        over["bptt_steps"] = MODULE_STEPS[task]
    hp_lr, hp_scale = HYPERPARAMETERS.get((task, entry), (0.1, 0.1))
    lr = hp_lr if lr is None else lr
    scale = hp_scale if scale is None else scale
    kind = FEEDBACK_KIND.get(entry, "dense")
    if over.get("cell") == "leaky":
        over["leak_max_shift"] = leak_max_shift_for(meta["T"])
    fb = RNNFeedback(kind=kind, k=SPARSE_K, values="pm1", scale=scale if kind != "output" else 1.0,
                     storage=storage, seed=1)
    return RNNConfig(n_in=meta["n_in"], hidden=HIDDEN[task], n_out=meta["n_out"], activation=ACTIVATION,
                     readout="last", loss=meta["loss"], feedback=fb, lr=lr, batch_size=BATCH_SIZE, clip=CLIP,
                     seed=0, **over)


def train(cfg, data, epochs):
    """Train a fresh :class:`RNN`; returns (net, curve of test metrics, diverged)."""
    from .rnn import RNN

    X, Y, Xt, Yt = data
    net = RNN(cfg)
    curve, diverged = [], False
    bad = 0.1 if cfg.loss == "xent" else float("nan")
    for _ in range(epochs):
        loss = net.train_epoch(X, Y)
        if loss != loss:
            diverged = True
            curve.extend([bad] * (epochs - len(curve)))
            break
        curve.append(net.evaluate(Xt, Yt))
    return net, curve, diverged


def seed_spread(curves) -> dict:
    """Per-seed test curves -> the final and best-epoch metric of each seed and their means
    (the seed tables of ``benchmarks/rnn_leaky_seeds.py`` and ``rnn_gru_probe.py``)."""
    finals, bests = [c[-1] for c in curves], [max(c) for c in curves]
    return {"final": finals, "best_epoch": bests, "final_mean": sum(finals) / len(finals),
            "best_epoch_mean": sum(bests) / len(bests)}


def study(task="mnist5k", epochs=20, quick=False, quiet=False, entries=tuple(ENTRIES)):
    from .rnn import costs, load_task

    X, Y, Xt, Yt, meta = load_task(task)
    if quick:
        X, Y, Xt, Yt = X[:300], Y[:300], Xt[:300], Yt[:300]
    T = meta["T"]
    results = []
    t_start = time.perf_counter()
    for entry in entries:
        cfg = config(task, entry, meta)
        t0 = time.perf_counter()
        _, curve, diverged = train(cfg, (X, Y, Xt, Yt), epochs)
        secs = time.perf_counter() - t0
        c = costs(cfg, T)
        lfsr = costs(config(task, entry, meta, storage="lfsr"), T)["feedback_storage_bits"]
        metric = "accuracy" if meta["loss"] == "xent" else "mse"
        best = max(curve) if metric == "accuracy" else min(curve)
        r = {
            "task": task, "entry": entry, "label": ENTRIES[entry][0], "method": cfg.method,
            "window": cfg.window, "bptt_steps": cfg.bptt_steps, "cell": cfg.cell,
            "leak_max_shift": cfg.leak_max_shift if cfg.cell == "leaky" else None,
            "feedback": ({"kind": cfg.feedback.kind if cfg.method != "dfa_sparse" else "sparse",
                          "k": cfg.feedback.k, "values": cfg.feedback.values, "scale": cfg.feedback.scale}
                         if entry in FEEDBACK_KIND else None),
            "hidden": cfg.hidden, "T": T, "n_in": cfg.n_in, "n_out": cfg.n_out, "epochs": epochs,
            "metric": metric, "test": curve[-1], "best_test": best, "curve": curve, "diverged": diverged,
            "lr": cfg.lr,
            "no_backward_through_time": not c["backward_through_time"],
            "random_feedback": FEEDBACK_KIND.get(entry) in ("dense", "sparse"),
            **{k: v for k, v in c.items() if k != "backward_through_time"},
            "feedback_storage_bits_lfsr": lfsr,
            "seconds": round(secs, 1),
        }
        results.append(r)
        if not quiet:
            print(f"  {task} {entry:14s} test {metric} {r['test']:.4f}  ({secs:.1f} s)", file=sys.stderr, flush=True)
    def gap(r, bp):
        d = bp["test"] - r["test"]
        return round(100 * d, 2) if r["metric"] == "accuracy" else round(r["test"] - bp["test"], 5)

    bp = next((q for q in results if q["entry"] == "bptt"), None)
    by_cell = {BPTT_ENTRIES[q["entry"]]: q for q in results if q["entry"] in BPTT_ENTRIES}
    for r in results:
        if bp is not None:
            r["gap_to_bptt"] = gap(r, bp)
        if r["cell"] in by_cell:
            r["gap_to_bptt_same_cell"] = gap(r, by_cell[r["cell"]])
    return {
        "task": task, "train_sequences": len(X), "test_sequences": len(Xt), "T": T, "quick": quick,
        "epochs": epochs, "batch_size": BATCH_SIZE, "clip": CLIP, "activation": ACTIVATION,
        "hidden": HIDDEN[task],
        "optimizer": "plain SGD (no momentum), mini-batch 16, global-norm clip 1.0, samples in data-set order",
        "arithmetic": "float32 (PyTorch tensors, manual gradients, CPU, 1 thread)",
        "initial_weights": "torch.Generator().manual_seed(0), uniform +-1/sqrt(H), identical for every entry",
        "hyperparameters": {e: {"lr": lr, "feedback_scale": s} for (t, e), (lr, s) in HYPERPARAMETERS.items()
                            if t == task},
        "hyperparameter_selection": "benchmarks/study_rnn_tuning.py: validation split of the training set, "
                                    f"grid lr {list(LR_GRID)} x feedback scale {list(SCALE_GRID)} screened on "
                                    "a short schedule, the best 3 retrained for the full 20 epochs",
        "seconds": round(time.perf_counter() - t_start, 1),
        "results": results,
    }


def acceptance(report) -> dict:
    """Best entry whose recurrent layer is trained without a backward pass through time, with
    random feedback (DFA family) and with any feedback, and plain DFA, against BPTT (``gap``:
    the Elman net's BPTT; ``gap_same_cell``: BPTT of the entry's own cell). ``within_1_point``
    is judged against the best BPTT entry of any cell, so a cell that is easy for DFA but
    worse under BPTT cannot pass."""
    res = report["results"]
    acc = res[0]["metric"] == "accuracy"
    key = (lambda r: r["test"]) if acc else (lambda r: -r["test"])
    bp = next(r for r in res if r["entry"] == "bptt")
    bptts = [r for r in res if r["entry"] in BPTT_ENTRIES]
    best_bp = max(bptts, key=key)
    dfa_family = [r for r in res if r["no_backward_through_time"] and r["random_feedback"]]
    no_bptt = [r for r in res if r["no_backward_through_time"]]
    out = {"bptt": bp["test"], **{f"{r['entry']}": r["test"] for r in bptts if r is not bp},
           "best_bptt": {"entry": best_bp["entry"], "test": best_bp["test"]}}
    for name, group in (("best_dfa_family_no_bptt", dfa_family), ("best_no_bptt", no_bptt)):
        if group:
            b = max(group, key=key)
            out[name] = {"entry": b["entry"], "test": b["test"], "gap": b.get("gap_to_bptt"),
                         "gap_same_cell": b.get("gap_to_bptt_same_cell")}
    plain = next((r for r in res if r["entry"] == "dfa"), None)
    if plain:
        out["plain_dfa"] = {"test": plain["test"], "gap": plain.get("gap_to_bptt")}
    if acc and "best_dfa_family_no_bptt" in out:
        out["within_1_point"] = 100 * (best_bp["test"] - out["best_dfa_family_no_bptt"]["test"]) <= 1.0
    return out


def format_table(report) -> str:
    from .study import _columns

    acc = report["results"][0]["metric"] == "accuracy"
    rows = [("entry", "method", "no BPTT", "lr", "fb scale", "test acc" if acc else "test MSE",
             "gap to BPTT", "fwd MACs", "err-prop MACs", "update MACs", "fb bits (table)", "bwd state words")]
    for r in report["results"]:
        rows.append((r["entry"], r["label"], "yes" if r["no_backward_through_time"] else "no", f"{r['lr']:g}",
                     f"{r['feedback']['scale']:g}" if r["feedback"] and r["feedback"]["kind"] != "output" else "-",
                     (f"{r['test']:.4f}" if acc else f"{r['test']:.4f}") + (" (diverged)" if r["diverged"] else ""),
                     (f"{r['gap_to_bptt']:+.2f}" if acc else f"{r['gap_to_bptt']:+.4f}") if "gap_to_bptt" in r else "-",
                     f"{r['forward_macs']:,}", f"{r['error_macs']:,}", f"{r['update_macs']:,}",
                     f"{r['feedback_storage_bits']:,}", f"{r['backward_state_words']:,}"))
    return _columns(rows)


def plot(report, path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    res = report["results"]
    acc = res[0]["metric"] == "accuracy"
    names = [r["entry"] for r in res]
    x = np.arange(len(res))
    colors = ["tab:gray" if not r["no_backward_through_time"] else
              ("tab:blue" if r["random_feedback"] else "tab:orange") for r in res]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.8))
    vals = [100 * r["test"] if acc else r["test"] for r in res]
    bars = axes[0].bar(x, vals, color=colors)
    for b, v in zip(bars, vals):
        axes[0].text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}" if acc else f"{v:.3f}", ha="center",
                     va="bottom", fontsize=7)
    axes[0].set_ylabel("test accuracy (%)" if acc else "test MSE (0.167 = predict the mean)")
    axes[0].set_title(f"{report['task']}, H={report['hidden']}, T={report['T']}, {report['epochs']} epochs")
    if not acc:
        axes[0].axhline(1 / 6, color="k", lw=0.8, ls="--")
    for r in res:
        axes[1].plot(range(1, len(r["curve"]) + 1), [100 * v if acc else v for v in r["curve"]], label=r["entry"],
                     color="tab:gray" if not r["no_backward_through_time"] else None)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("test accuracy (%)" if acc else "test MSE")
    axes[1].legend(fontsize=6, ncol=2)
    axes[1].set_title("learning curves (gray: backward pass through time)")
    axes[2].bar(x, [r["error_macs"] for r in res], color=colors)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("error-propagation MACs / sequence")
    axes[2].set_title("error propagation")
    axes[3].bar(x, [max(r["feedback_storage_bits"], 1) for r in res], color=colors)
    axes[3].set_yscale("log")
    axes[3].set_ylabel("feedback storage bits (table; LFSR = 0; none shown as 1)")
    axes[3].set_title("feedback storage")
    for ax in (axes[0], axes[2], axes[3]):
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def run(args) -> int:
    import torch

    torch.set_num_threads(1)
    task = getattr(args, "task", None) or "mnist5k"
    report = study(task, args.epochs, args.quick)
    report["acceptance"] = acceptance(report)
    print(format_table(report))
    print(f"\n{task}: {report['train_sequences']} train / {report['test_sequences']} test sequences of "
          f"{report['T']} steps, {args.epochs} epochs, batch {BATCH_SIZE}; {report['seconds']:.0f} s")
    print(f"acceptance: {json.dumps(report['acceptance'])}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"wrote {args.json}")
    if getattr(args, "plot", None):
        print(f"wrote {plot(report, args.plot)}")
    return 0
