"""Control for the fixed-point CNN study (docs/cnn.md): the best DFA variant with its DFA layers
frozen (lr_shift 30: every update rounds to zero), everything else as in
`dfa-engine study --cnn --fixed` (s1.22 weights). Writes benchmarks/results/cnn_frozen_control.json."""
import json
import numpy as np
from threadpoolctl import threadpool_limits
from dfa_engine.cnn_config import cnn_config_from_dict
from dfa_engine.data import load_dataset
from dfa_engine.sim.golden_cnn import GoldenCNN
from dfa_engine.study_cnn_fixed import engine_dict
ds = load_dataset("mnist5k")
out = {}
with threadpool_limits(1):
    for net in ("2conv", "4conv"):
        d = engine_dict(net)
        d["training"]["lr_shift"] = [30 if m == "dfa" else s for m, s in zip(
            [e["method"] for e in d["network"]["layers"] if e["type"] == "conv"] + ["bp"], d["training"]["lr_shift"])]
        cfg = cnn_config_from_dict(d)
        g = GoldenCNN(cfg)
        X = cfg.formats.input.from_float(ds.x_train).reshape(-1, 1, 28, 28)
        Xt = cfg.formats.input.from_float(ds.x_test).reshape(-1, 1, 28, 28)
        W0 = [W.copy() for W, _ in g.parameters()]
        curve = []
        for ep in range(10):
            g.train_epoch(X, ds.y_train)
            curve.append(g.evaluate(Xt, ds.y_test))
        changed = [float(np.mean(W != W0[l])) for l, (W, _) in enumerate(g.parameters())]
        out[net] = {"lr_shift": list(cfg.lr_shift), "curve": curve, "changed": changed}
        print(net, out[net], flush=True)
json.dump(out, open("benchmarks/results/cnn_frozen_control.json", "w"), indent=1)
