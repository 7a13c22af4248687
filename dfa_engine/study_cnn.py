"""The CNN entries of the accuracy study: ``dfa-engine study --cnn`` (definitions: ``docs/cnn.md``).

Two networks on MNIST-5k (the MLP study's split: the first 4,000 samples train, the last
1,000 test), each trained from the same initial weights (``torch.manual_seed(0)``) by

* ``bp``: float BP;
* ``dfa``: plain DFA, dense feedback ``B_l`` on every non-output layer;
* ``dfa_sparse_dilated``: DFA with the sparse dilated feedback on every non-output layer;
* ``module_a``: the top layer of each module gets ``B e``, BP inside the module;
* ``module_b``: the top layer of each module gets the gradient BP brings across the module
  boundary, the other layers of the module get ``B e``;
* ``hybrid``: the first module by DFA (``B e`` on each of its layers), the rest by BP.

Module, module-B and hybrid DFA use the sparse dilated feedback. Mini-batches of 16, plain
SGD without momentum, samples in data-set order, one learning rate for every layer; the
activation (ReLU or hardtanh), the learning rate and the feedback scale per (network,
method) were chosen by ``benchmarks/study_cnn_tuning.py`` on a validation split (the last
1,000 training samples, 3 epochs), never on the test set.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

#: name -> (spec, modules). Modules are lists of parametrized-layer indices (output excluded).
NETWORKS = {
    "2conv": ("conv8-mp2-conv16-mp2-fc10", ((0, 1),)),
    "4conv": ("conv16-conv16-mp2-conv32-conv32-mp2-fc10", ((0, 1), (2, 3))),
}
#: Modules the hybrid uses (its first module by DFA, the others by BP).
HYBRID_MODULES = {"2conv": ((0,), (1,)), "4conv": ((0, 1), (2, 3))}
METHODS = ("bp", "dfa", "dfa_sparse_dilated", "module_a", "module_b", "hybrid")
METHOD_LABELS = {"bp": "BP", "dfa": "DFA (dense)", "dfa_sparse_dilated": "sparse dilated DFA",
                 "module_a": "module DFA (A)", "module_b": "module DFA (B)", "hybrid": "hybrid"}
#: Structure of the sparse dilated feedback (phase 1 of the tuning script).
SPARSE = {"d": 2, "k": 1, "groups": 2, "values": "pm1"}
#: (network, method) -> (activation, learning rate, feedback scale) (phase 2 of the tuning script).
#: Many DFA winners sit at the grid's largest rate (0.2) and smallest scales; the product
#: lr * scale is what the DFA layers see.
HYPERPARAMETERS = {
    ("2conv", "bp"): ("hardtanh", 0.2, 1.0),                       # val 0.958
    ("2conv", "dfa"): ("hardtanh", 0.1, 1e-2),                     # val 0.882
    ("2conv", "dfa_sparse_dilated"): ("relu", 0.1, 1e-2),          # val 0.874
    ("2conv", "module_a"): ("hardtanh", 0.2, 1e-3),                # val 0.867
    ("2conv", "module_b"): ("hardtanh", 0.2, 1e-3),                # val 0.944
    ("2conv", "hybrid"): ("hardtanh", 0.2, 1e-3),                  # val 0.944 (same sources as module_b)
    ("4conv", "bp"): ("relu", 0.1, 1.0),                           # val 0.974
    ("4conv", "dfa"): ("hardtanh", 0.2, 1e-3),                     # val 0.880
    ("4conv", "dfa_sparse_dilated"): ("hardtanh", 0.2, 1e-4),      # val 0.841
    ("4conv", "module_a"): ("hardtanh", 0.2, 1e-3),                # val 0.866
    ("4conv", "module_b"): ("hardtanh", 0.2, 1e-4),                # val 0.927
    ("4conv", "hybrid"): ("hardtanh", 0.2, 1e-4),                  # val 0.973
}
BATCH_SIZE = 16
DENSE_FEEDBACK_BITS = 8


def config(network: str, method: str, storage: str = "table"):
    from .cnn import CNNConfig, FeedbackSpec

    spec, modules = NETWORKS[network]
    act, lr, scale = HYPERPARAMETERS.get((network, method), ("relu", 0.1, 1e-3))
    if method == "hybrid":
        modules = HYBRID_MODULES[network]
    kind = "dense" if method == "dfa" else "sparse_dilated"
    fb = FeedbackSpec(kind=kind, scale=scale, bits=DENSE_FEEDBACK_BITS, storage=storage, seed=1, **SPARSE)
    return CNNConfig(spec=spec, modules=modules, method=method, activation=act, lr=lr, feedback=fb,
                     batch_size=BATCH_SIZE, seed=0)


def study(epochs=10, quick=False, quiet=False, networks=tuple(NETWORKS), methods=METHODS):
    import torch

    from .cnn import CNN, costs, true_gradient_layers
    from .data import load_dataset

    ds = load_dataset("mnist5k")
    X = torch.tensor(ds.x_train, dtype=torch.float32).reshape(-1, 1, 28, 28)
    Y = torch.tensor(ds.y_train)
    Xt = torch.tensor(ds.x_test, dtype=torch.float32).reshape(-1, 1, 28, 28)
    Yt = torch.tensor(ds.y_test)
    if quick:
        X, Y, Xt, Yt = X[:300], Y[:300], Xt[:300], Yt[:300]
    results = []
    t_start = time.perf_counter()
    for network in networks:
        bp_macs = None
        for method in methods:
            cfg = config(network, method)
            net = CNN(cfg)
            t0 = time.perf_counter()
            curve, diverged = [], False
            for _ in range(epochs):
                loss = net.train_epoch(X, Y)
                if loss != loss:
                    diverged = True
                    curve.extend([0.1] * (epochs - len(curve)))
                    break
                curve.append(net.evaluate(Xt, Yt))
            secs = time.perf_counter() - t0
            c = costs(net)
            lfsr = costs(CNN(config(network, method, storage="lfsr")))["feedback_storage_bits"]
            if method == "bp":
                bp_macs = c["backward_macs"]
            convs = [i for i, b in enumerate(net.blocks[:-1]) if b.spec.kind == "conv"]
            true = true_gradient_layers(net)
            r = {
                "network": network, "spec": cfg.spec, "method": method, "epochs": epochs,
                "test_accuracy": curve[-1], "best_test_accuracy": max(curve), "curve": curve,
                "diverged": diverged,
                "sources": list(net.sources),
                "modules": [list(m) for m in (cfg.modules or ())],
                "conv_layers_direct_dfa": sum(net.sources[i] == "dfa" for i in convs),
                "conv_layers_not_true_gradient": sum(not true[i] for i in convs),
                "conv_layers": len(convs),
                "activation": cfg.activation, "lr": cfg.lr, "batch_size": cfg.batch_size,
                "feedback": ({"kind": net.feedback_spec.kind, "scale": net.feedback_spec.scale,
                              **({"d": net.feedback_spec.d, "k": net.feedback_spec.k,
                                  "groups": net.feedback_spec.groups, "values": net.feedback_spec.values}
                                 if net.feedback_spec.kind == "sparse_dilated" else
                                 {"bits": net.feedback_spec.bits})}
                             if "dfa" in net.sources else None),
                "forward_macs": c["forward_macs"],
                "backward_macs": c["backward_macs"],
                "backward_macs_vs_bp": c["backward_macs"] / bp_macs if bp_macs else None,
                "feedback_storage_bits": c["feedback_storage_bits"],
                "feedback_storage_bits_lfsr": lfsr,
                "per_layer": c["per_layer"],
                "seconds": round(secs, 1),
            }
            results.append(r)
            if not quiet:
                print(f"  {network} {method:20s} test {r['test_accuracy']:.4f}  ({secs:.1f} s)", file=sys.stderr,
                      flush=True)
    for r in results:
        bp = next(q for q in results if q["network"] == r["network"] and q["method"] == "bp")
        r["gap_to_bp_points"] = round(100 * (bp["test_accuracy"] - r["test_accuracy"]), 2)
    return {
        "dataset": "mnist5k", "train_samples": len(X), "test_samples": len(Xt), "quick": quick,
        "epochs": epochs, "batch_size": BATCH_SIZE,
        "optimizer": "plain SGD (no momentum), mini-batch 16, samples in data-set order, mean cross-entropy",
        "arithmetic": "float32 (PyTorch, CPU, 1 thread)",
        "initial_weights": "PyTorch default init after torch.manual_seed(0), identical for every method",
        "sparse_dilated": dict(SPARSE),
        "dense_feedback_bits": DENSE_FEEDBACK_BITS,
        "hyperparameters": {f"{n}/{m}": {"activation": a, "lr": lr, "feedback_scale": s}
                            for (n, m), (a, lr, s) in HYPERPARAMETERS.items()},
        "hyperparameter_selection": "benchmarks/study_cnn_tuning.py: train on the first 3000 training samples, "
                                    "validate on the last 1000, 3 epochs; never the test set",
        "seconds": round(time.perf_counter() - t_start, 1),
        "results": results,
    }


def format_table(report) -> str:
    from .study import _columns

    rows = [("network", "method", "act", "lr", "fb scale", "test acc", "gap to BP", "conv DFA", "bwd MACs",
             "vs BP", "fb bits (table)")]
    for r in report["results"]:
        rows.append((r["network"], METHOD_LABELS[r["method"]], r["activation"], f"{r['lr']:g}",
                     f"{r['feedback']['scale']:g}" if r["feedback"] else "-",
                     f"{r['test_accuracy']:.4f}" + (" (diverged)" if r["diverged"] else ""),
                     f"{r['gap_to_bp_points']:+.2f}",
                     f"{r['conv_layers_direct_dfa']}/{r['conv_layers']}",
                     f"{r['backward_macs']:,}", f"{r['backward_macs_vs_bp']:.3f}", f"{r['feedback_storage_bits']:,}"))
    return _columns(rows)


def plot(report, path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    nets = list(dict.fromkeys(r["network"] for r in report["results"]))
    methods = list(dict.fromkeys(r["method"] for r in report["results"]))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    w = 0.8 / len(nets)
    x = np.arange(len(methods))
    get = {(r["network"], r["method"]): r for r in report["results"]}
    for i, n in enumerate(nets):
        acc = [100 * get[(n, m)]["test_accuracy"] for m in methods]
        bars = axes[0].bar(x + i * w, acc, w, label=f"{n} ({get[(n, methods[0])]['spec']})")
        for b, a in zip(bars, acc):
            axes[0].text(b.get_x() + b.get_width() / 2, a + 0.3, f"{a:.1f}", ha="center", fontsize=7)
        axes[1].bar(x + i * w, [get[(n, m)]["backward_macs"] for m in methods], w, label=n)
        axes[2].bar(x + i * w, [max(get[(n, m)]["feedback_storage_bits"], 1) for m in methods], w, label=n)
    lo = min(100 * r["test_accuracy"] for r in report["results"])
    axes[0].set_ylim(max(0, min(lo, 85) - 3), 100)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_title(f"MNIST-5k, {report['epochs']} epochs, batch {report['batch_size']}, SGD")
    axes[1].set_ylabel("error-propagation MACs / sample")
    axes[1].set_yscale("log")
    axes[1].set_title("error propagation (BP: transposed convs; DFA: B e)")
    axes[2].set_ylabel("feedback storage (bits, table; LFSR = 0)")
    axes[2].set_yscale("log")
    axes[2].set_title("feedback storage (BP: 0, shown as 1)")
    for ax in axes:
        ax.set_xticks(x + w * (len(nets) - 1) / 2)
        ax.set_xticklabels([METHOD_LABELS[m] for m in methods], rotation=25, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def run(args) -> int:
    import torch

    if args.epochs < 1:
        print("error: --epochs must be at least 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    report = study(args.epochs, args.quick)
    print(format_table(report))
    print(f"\n{report['train_samples']} train / {report['test_samples']} test samples, {args.epochs} epochs, "
          f"batch {BATCH_SIZE}; {report['seconds']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"wrote {args.json}")
    if getattr(args, "plot", None):
        print(f"wrote {plot(report, args.plot)}")
    return 0
