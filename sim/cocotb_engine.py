"""cocotb test module: the engine in Verilator against the golden model.

Started by :func:`dfa_engine.sim.verilator_run.run_training`. The harness streams the
samples by itself (no Python per cycle); this module wakes once per result, checks the
prediction and output error against the golden model's record of that sample as soon as
the record exists (the harness stores the results and wakes it once per batch) (scoreboard, with the trace diff naming the first differing value; the
golden model runs beside the simulator, :mod:`dfa_engine.sim.golden_feed`), and at the
end compares every weight, bias and counter read back through the host port.
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

from dfa_engine.hdl.family import engine_family
from dfa_engine.sim.golden_feed import GoldenFeed
from dfa_engine.sim.harness import payload_widths
from dfa_engine.sim.trace import first_difference


def _decode_result(cfg, w: dict, value: int):
    """(prediction, e, trained, rejected) of a result payload; ``w``: :func:`payload_widths`."""
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
    # The golden model runs beside the simulator (sim/golden_feed.py); this process only
    # compares what it has written so far, so the simulator never waits for it.
    feed = GoldenFeed(run_dir, cfg.n_classes) if check else None
    pending = []     # (sample, prediction, e, trained, rejected) not yet compared
    mismatch = None

    def compare(items):
        """Check results against the golden records; returns the ones not yet available."""
        nonlocal mismatch
        have = feed.poll()
        later = []
        for item in items:
            s, pred, e, trained, rejected = item
            if s >= have:
                later.append(item)
                continue
            want = feed.records[s]
            if mismatch is None and (want[0] != pred or want[1] != trained or want[2] != rejected
                                     or (want[3] and list(want[4:]) != e)):
                rec = {"prediction": np.array([pred]), "trained": np.array([trained]),
                       "rejected": np.array([rejected])}
                exp = {"prediction": want[:1], "trained": want[1:2], "rejected": want[2:3]}
                if want[3]:
                    rec["e"], exp["e"] = np.array(e), want[4:]
                mismatch = str(first_difference([exp], [rec])).replace("sample 0", f"sample {s}")
                dut._log.error("scoreboard: %s (golden != rtl)", mismatch)
        return later

    # The harness resets the engine and starts by itself: cocotb only reads signals, so
    # Verilator need not re-evaluate logic after every VPI write (the harness marks its
    # signals public_flat_rd, not rw).
    await RisingEdge(dut.start)
    t0 = time.perf_counter()
    strobe = RisingEdge(dut.result_strobe)
    finished = RisingEdge(dut.done)
    progress_path = run_dir / "progress"
    results = [None] * n
    store = dut.store
    widths = payload_widths(cfg)
    taken = 0        # results read from the harness's store so far

    while True:
        fired = await First(strobe, finished)
        await ReadOnly()
        stored = int(dut.results_stored.value)
        for i in range(taken, stored):
            s = int(store.result_sample[i].value)
            pred, e, trained, rejected = _decode_result(cfg, widths, int(store.results[i].value))
            results[s] = {"prediction": pred, "trained": trained, "rejected": rejected,
                          "cycle": int(store.result_cycle[i].value)}
            # (a result a reset dropped has no entry: the engine still trained that sample,
            # and the golden record for it is simply not compared)
            if check:
                pending.append((s, pred, e, trained, rejected))
        if stored > taken:
            progress_path.write_text(f"{stored}\n")
        taken = stored
        if check:
            pending = compare(pending)
        if fired is finished:
            break
    results = [r if r is not None else {"prediction": None, "trained": None, "rejected": None, "dropped": True}
               for r in results]
    await Timer(1, "ns")
    wall = time.perf_counter() - t0
    cycles = int(dut.cycles.value)
    if check:
        feed.wait_finished(timeout_s=600 + 0.1 * n)
        pending = compare(pending)
        assert not pending, f"no golden record for samples {[p[0] for p in pending][:5]}"
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
    fam = engine_family(cfg)
    for n_out, n_in in fam.matrix_shapes(cfg):
        W = np.array(values[idx:idx + n_out * n_in], dtype=np.int64).reshape(n_out, n_in)
        idx += n_out * n_in
        b = np.array(values[idx:idx + n_out], dtype=np.int64)
        idx += n_out
        params.append((W, b))
    counters = dict(zip(fam.counters, values[idx:idx + len(fam.counters)]))
    summary["counters"] = counters
    summary["host_errors"] = int(sum(errors))
    if check:
        gp = feed.parameters()
        summary["params_equal"] = all(np.array_equal(W, Wg) and np.array_equal(b, bg)
                                      for (W, b), (Wg, bg) in zip(params, gp))
        if not summary["params_equal"] and mismatch is None:
            got = [{f"W{l + 1}": W, f"b{l + 1}": b} for l, (W, b) in enumerate(params)]
            want = [{f"W{l + 1}": W, f"b{l + 1}": b} for l, (W, b) in enumerate(gp)]
            diff = first_difference([{k: v for d in want for k, v in d.items()}],
                                    [{k: v for d in got for k, v in d.items()}])
            summary["mismatch"] = f"final parameters: {str(diff).replace('sample 0, ', '')}"
        summary["golden_saturation_events"] = feed.saturation_events()
        feed.close()
    np.savez(run_dir / "params.npz", **{f"W{l + 1}": W for l, (W, _) in enumerate(params)},
             **{f"b{l + 1}": b for l, (_, b) in enumerate(params)})
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if check:
        assert summary["mismatch"] is None, summary["mismatch"]
        assert summary["params_equal"]
