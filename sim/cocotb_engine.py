"""cocotb test module: the engine in Verilator against the golden model.

Started by :func:`dfa_engine.sim.verilator_run.run_training`. The harness streams the
samples by itself (no Python per cycle); this module wakes once per result, checks the
prediction and output error against the golden model as they appear (scoreboard, with
the trace diff naming the first differing value), and at the end compares every weight,
bias and counter read back through the host port.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.triggers import First, ReadOnly, RisingEdge, Timer

from dfa_engine.hdl.engine import COUNTERS
from dfa_engine.sim.golden import GoldenModel
from dfa_engine.sim.harness import payload_widths
from dfa_engine.sim.trace import first_difference


def _decode_result(cfg, value: int):
    w = payload_widths(cfg)
    pred = value & ((1 << w["pred"]) - 1)
    off = w["pred"]
    e = []
    for _ in range(cfg.n_classes):
        raw = (value >> off) & ((1 << w["err"]) - 1)
        if raw >= 1 << (w["err"] - 1):
            raw -= 1 << w["err"]
        e.append(raw)
        off += w["err"]
    trained = (value >> off) & 1
    rejected = (value >> (off + 1)) & 1
    return pred, e, trained, rejected


def _read_hex(path):
    """Values of a ``$writememh`` file (skipping ``//`` address comments)."""
    return [int(tok, 16) for tok in Path(path).read_text().split() if not tok.startswith("//")]


@cocotb.test()
async def train_and_compare(dut):
    run_dir = Path(os.environ["DFA_RUN_DIR"])
    check = os.environ.get("DFA_CHECK", "1") == "1"
    with open(run_dir / "config.pkl", "rb") as fh:
        cfg = pickle.load(fh)
    data = np.load(run_dir / "io_data.npz")
    X, Y, train = data["X"], data["Y"], data["train"]
    n = len(X)
    golden = GoldenModel(cfg)
    rtl_trace, golden_trace = [], []
    results = []
    mismatch = None

    # The harness resets the engine and starts by itself: cocotb only reads signals, so
    # Verilator need not re-evaluate logic after every VPI write (the harness marks its
    # signals public_flat_rd, not rw).
    await RisingEdge(dut.start)
    t0 = time.perf_counter()
    strobe = RisingEdge(dut.result_strobe)
    finished = RisingEdge(dut.done)
    progress_path = run_dir / "progress"
    step = max(1, n // 200)
    results = [None] * n
    expected = 0     # the next sample the golden model processes

    def golden_step(s):
        """The golden model's view of sample ``s``: (prediction, e or None, trained, rejected)."""
        label_ok = 0 <= Y[s] < cfg.n_classes
        if train[s] and label_ok:
            return golden.train_step(X[s], int(Y[s])), golden.last_error.copy(), 1, 0
        return golden.predict(X[s]), None, 0, int(not label_ok)

    while True:
        fired = await First(strobe, finished)
        if fired is finished:
            break
        await ReadOnly()
        s = int(dut.last_result_sample.value)
        pred, e, trained, rejected = _decode_result(cfg, int(dut.last_result.value))
        results[s] = {"prediction": pred, "trained": trained, "rejected": rejected,
                      "cycle": int(dut.cycles.value)}
        if (s + 1) % step == 0 or s + 1 == n:
            progress_path.write_text(f"{s + 1}\n")
        if not check:
            continue
        # samples whose result a reset dropped were still trained by the engine
        while expected < s:
            golden_step(expected)
            expected += 1
        want_pred, want_e, want_trained, want_rejected = golden_step(s)
        expected = s + 1
        rec = {"prediction": np.array([pred]), "trained": np.array([trained]), "rejected": np.array([rejected])}
        want = {"prediction": np.array([want_pred]), "trained": np.array([want_trained]),
                "rejected": np.array([want_rejected])}
        if want_e is not None:
            rec["e"] = np.array(e)
            want["e"] = want_e
        rtl_trace.append(rec)
        golden_trace.append(want)
        if mismatch is None:
            diff = first_difference([want], [rec])
            if diff is not None:
                mismatch = str(diff).replace("sample 0", f"sample {s}")
                dut._log.error("scoreboard: %s (golden != rtl)", mismatch)
    if check:
        while expected < n:
            golden_step(expected)
            expected += 1
    results = [r if r is not None else {"prediction": None, "trained": None, "rejected": None, "dropped": True}
               for r in results]
    await Timer(1, "ns")
    wall = time.perf_counter() - t0
    cycles = int(dut.cycles.value)
    summary = {"samples": n, "cycles": cycles, "wall_seconds": wall,
               "sim_cycles_per_second": cycles / wall if wall > 0 else None,
               "results": results, "mismatch": mismatch}
    # parameters and counters read back through the host port
    w = payload_widths(cfg)
    dump = _read_hex(run_dir / "io_dump.hex")
    data_mask = (1 << w["data"]) - 1

    def signed_data(v):
        v &= data_mask
        return v - (1 << w["data"]) if v >> (w["data"] - 1) else v

    errors = [v >> w["data"] for v in dump]
    values = [signed_data(v) for v in dump]
    idx = 0
    params = []
    for l in range(cfg.n_layers):
        n_out, n_in = cfg.layers[l + 1], cfg.layers[l]
        W = np.array(values[idx:idx + n_out * n_in], dtype=np.int64).reshape(n_out, n_in)
        idx += n_out * n_in
        b = np.array(values[idx:idx + n_out], dtype=np.int64)
        idx += n_out
        params.append((W, b))
    counters = dict(zip(COUNTERS, values[idx:idx + len(COUNTERS)]))
    summary["counters"] = counters
    summary["host_errors"] = int(sum(errors))
    if check:
        gp = golden.parameters()
        summary["params_equal"] = all(np.array_equal(W, Wg) and np.array_equal(b, bg)
                                      for (W, b), (Wg, bg) in zip(params, gp))
        if not summary["params_equal"] and mismatch is None:
            got = [{f"W{l + 1}": W, f"b{l + 1}": b} for l, (W, b) in enumerate(params)]
            want = [{f"W{l + 1}": W, f"b{l + 1}": b} for l, (W, b) in enumerate(gp)]
            diff = first_difference([{k: v for d in want for k, v in d.items()}],
                                    [{k: v for d in got for k, v in d.items()}])
            summary["mismatch"] = f"final parameters: {str(diff).replace('sample 0, ', '')}"
        summary["golden_saturation_events"] = int(sum(golden.stats.values()))
    np.savez(run_dir / "params.npz", **{f"W{l + 1}": W for l, (W, _) in enumerate(params)},
             **{f"b{l + 1}": b for l, (_, b) in enumerate(params)})
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if check:
        assert summary["mismatch"] is None, summary["mismatch"]
        assert summary["params_equal"]
