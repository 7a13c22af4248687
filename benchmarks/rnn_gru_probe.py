"""A float probe outside the RNN study: DFA through time on a GRU, against the GRU's BPTT.

Issue 7 asks for a gated cell "if the numerics allow"; before any fixed-point work this
measures whether gating helps DFA on row-by-row MNIST-5k. A standard GRU (PyTorch's
equations and ``+-1/sqrt(H)`` initialisation, ``H = 128``, readout from ``h_T``, the study's
schedule: mini-batch 16, plain SGD, global-norm clip 1.0, float32) trained by

* ``bptt``: autograd through the whole sequence;
* ``dfa``: the output error ``e_T`` projected by the study's dense feedback matrix
  (``dfa_engine.feedback``, scaled) to every step's state, ``g_t = B e_T``, and each step's
  parameters get ``(dh_t / dtheta)^T g_t`` with ``h_{t-1}`` held constant: the step's own
  local derivatives (gates included), nothing through time. The readout gets its true
  gradient. Computed by autograd on ``sum_t <g_t, cell(x_t, const h_{t-1})>``.

Learning rate (and feedback scale) are chosen on the study's validation split (first 3,000
training images, last 1,000, 5 epochs; grid lr 0.1 / 0.3 / 1.0, scale 1 / 0.1 / 0.01), then
each method is trained for 20 epochs on the 4,000 training images and tested on the 1,000
test images, for each seed. Prints a table; ``--json PATH`` writes it (an existing file keeps
the rows of the methods not run).

    python benchmarks/rnn_gru_probe.py --seeds 0,1,2 --json benchmarks/results/rnn_gru_probe.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from dfa_engine.rnn import RNN, RNNConfig, RNNFeedback, load_task  # noqa: E402
from dfa_engine.study_rnn import seed_spread  # noqa: E402

H, BATCH, CLIP = 128, 16, 1.0


class GRUProbe:
    """A GRU (gates r, z, candidate n) with BPTT or per-step DFA gradients."""

    def __init__(self, n_in, n_out, method, lr, scale, seed):
        g = torch.Generator().manual_seed(seed)
        b = 1 / math.sqrt(H)
        u = lambda *s: (torch.rand(*s, generator=g) * 2 - 1) * b  # noqa: E731
        self.p = {"Wx": u(3 * H, n_in), "Wh": u(3 * H, H), "bx": u(3 * H), "bh": u(3 * H), "Wy": u(n_out, H),
                  "by": u(n_out)}
        self.method, self.lr, self.n_out = method, lr, n_out
        # the study's dense feedback matrix (the project's generator, s0.7), times the scale
        ref = RNN(RNNConfig(n_in=n_in, hidden=H, n_out=n_out, method="dfa",
                            feedback=RNNFeedback(kind="dense", scale=scale, seed=1)))
        self.B = ref.feedback_dense()

    def cell(self, x, h, q):
        gi, gh = x @ q["Wx"].T + q["bx"], h @ q["Wh"].T + q["bh"]
        r = torch.sigmoid(gi[:, :H] + gh[:, :H])
        z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        return (1 - z) * n + z * h

    def states(self, x, q, const_prev=False):
        h, hs = torch.zeros(x.shape[0], H), []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h.detach() if const_prev else h, q)
            hs.append(h)
        return hs

    def step(self, x, y):
        q = {k: v.clone().requires_grad_(True) for k, v in self.p.items()}
        if self.method == "bptt":
            hs = self.states(x, q)
            loss = torch.nn.functional.cross_entropy(hs[-1] @ q["Wy"].T + q["by"], y)
            grads = dict(zip(q, torch.autograd.grad(loss, list(q.values()))))
        else:
            hs = self.states(x, q, const_prev=True)
            with torch.no_grad():
                out = hs[-1] @ q["Wy"].T + q["by"]
                e = (torch.softmax(out, -1) - torch.nn.functional.one_hot(y, self.n_out).float()) / len(x)
                g = e @ self.B.T                                       # B e_T, the same at every step
            cell_params = ["Wx", "Wh", "bx", "bh"]
            surrogate = sum((g * h).sum() for h in hs)
            grads = dict(zip(cell_params, torch.autograd.grad(surrogate, [q[k] for k in cell_params])))
            grads["Wy"], grads["by"] = e.T @ hs[-1].detach(), e.sum(0)
        norm = math.sqrt(sum(float((v * v).sum()) for v in grads.values()))
        s = self.lr * min(1.0, CLIP / norm) if norm > 0 else self.lr
        for k, v in grads.items():
            self.p[k] -= s * v

    def evaluate(self, X, Y):
        with torch.no_grad():
            return float(((self.states(X, self.p)[-1] @ self.p["Wy"].T + self.p["by"]).argmax(1) == Y).float().mean())


def train(method, lr, scale, seed, data, epochs):
    X, Y, Xt, Yt = data
    net = GRUProbe(X.shape[2], 10, method, lr, scale, seed)
    curve = []
    for _ in range(epochs):
        for i in range(0, len(X), BATCH):
            net.step(X[i:i + BATCH], Y[i:i + BATCH])
        curve.append(net.evaluate(Xt, Yt))
    return curve


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="bptt,dfa")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    X, Y, Xt, Yt, _ = load_task("mnist5k")
    val = (X[:3000], Y[:3000], X[3000:], Y[3000:])
    rows = []
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        grid = [(lr, s) for lr in (0.1, 0.3, 1.0) for s in ((1.0,) if method == "bptt" else (1.0, 0.1, 0.01))]
        scores = [(train(method, lr, s, 0, val, 5)[-1], lr, s) for lr, s in grid]
        best = max(scores, key=lambda r: r[0])          # the first of equal scores
        curves = [train(method, best[1], best[2], seed, (X, Y, Xt, Yt), args.epochs)
                  for seed in (int(v) for v in args.seeds.split(","))]
        rows.append({"cell": "gru", "method": method, "validation": [list(r) for r in scores], "lr": best[1],
                     "feedback_scale": best[2] if method != "bptt" else None, "seeds": args.seeds,
                     **seed_spread(curves), "seconds": round(time.perf_counter() - t0, 1)})
        r = rows[-1]
        finals = r["final"]
        print(f"gru {method:<5} lr {r['lr']:<4g} scale {r['feedback_scale'] or '-'!s:<5} final "
              f"{100 * r['final_mean']:5.1f} ({100 * min(finals):.1f}-{100 * max(finals):.1f})  best epoch "
              f"{100 * r['best_epoch_mean']:5.1f}  {r['seconds']:.0f} s", flush=True)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        ran = {r["method"] for r in rows}        # an existing file keeps the other methods' rows
        old = [r for r in json.loads(path.read_text())["rows"] if r["method"] not in ran] if path.exists() else []
        path.write_text(json.dumps({"task": "mnist5k", "hidden": H, "epochs": args.epochs, "rows": old + rows},
                                   indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
