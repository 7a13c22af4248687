"""Randomized configurations (issue 8, item 2): the generator of ``dfa_engine.sim.fuzz`` and a
small run of ``benchmarks/fuzz.py`` (each case built and trained in Verilator, bit-exact)."""

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from dfa_engine.config import config_from_dict, validate
from dfa_engine.gen.generate import check_feasible
from dfa_engine.sim.fuzz import (N_CLASSES, N_INPUTS, _check, case_rates, case_seed, random_config,
                                 random_config_dict)

SEEDS = range(200)


def _benchmark():
    """``benchmarks/fuzz.py`` as a module (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "fuzz.py"
    spec = importlib.util.spec_from_file_location("benchmarks_fuzz", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_draws_only_valid_configurations():
    for seed in SEEDS:
        data, cfg = random_config(seed)
        validate(cfg)
        check_feasible(cfg)
        assert config_from_dict(data) == cfg
        assert cfg.layers[0] == N_INPUTS and cfg.layers[-1] == N_CLASSES and 1 <= cfg.n_hidden <= 3
        assert all(4 <= n <= 40 for n in cfg.layers[1:-1])
        assert 1 <= cfg.lanes <= 16
        assert cfg.rounding_update != "stochastic"       # (the engine does not implement it)


def test_generator_is_deterministic_per_seed():
    for seed in SEEDS:
        assert random_config_dict(seed) == random_config_dict(seed)
        assert case_rates(seed) == case_rates(seed)
    assert len({json.dumps(random_config_dict(s), sort_keys=True) for s in SEEDS}) == len(SEEDS)
    assert case_seed(1, 0) == case_seed(1, 0) != case_seed(1, 1) != case_seed(2, 1)


def test_generator_covers_the_space():
    """Across 200 seeds every value of every choice appears (feedback only counts where a
    layer uses DFA)."""
    seen = Counter()
    for seed in SEEDS:
        data, cfg = random_config(seed)
        f, fb = cfg.formats, cfg.feedback
        methods = set(cfg.methods)
        seen["mix", "hybrid" if len(methods) == 2 else methods.pop()] += 1
        seen["hidden", cfg.n_hidden] += 1
        seen["lanes", "1" if cfg.lanes == 1 else ">1"] += 1
        seen["lanes16", cfg.lanes == 16] += 1
        seen["schedule", cfg.schedule] += 1
        seen["memory", cfg.memory] += 1
        seen["activation", cfg.activation] += 1
        seen["lr", "multiplier" if cfg.lr_multiplier is not None else "shift"] += 1
        seen["lr_shift per layer", len(set(cfg.lr_shift)) > 1] += 1
        seen["rounding", cfg.rounding_forward, cfg.rounding_backward, cfg.rounding_update] += 1
        seen["input signed", f.input.signed] += 1
        seen["accumulator", "explicit" if f.accumulator is not None else "auto"] += 1
        seen["bias frac = weight frac", f.bias.frac_bits == f.weight.frac_bits] += 1
        if "dfa" in cfg.methods:
            seen["feedback", fb.kind, fb.storage] += 1
            if fb.kind == "sparse":
                seen["values", fb.values] += 1
                seen["k", fb.k] += 1
                seen["projection", cfg.projection] += 1
                if fb.values == "pow2":
                    seen["pow2 max_shift > 0", fb.max_shift > 0] += 1
    expected = ([("mix", m) for m in ("dfa", "bp", "hybrid")] + [("hidden", n) for n in (1, 2, 3)]
                + [("lanes", "1"), ("lanes", ">1"), ("lanes16", True)]
                + [("schedule", s) for s in ("one_pass", "two_pass")] + [("memory", m) for m in ("auto", "spram")]
                + [("activation", a) for a in ("relu", "hardtanh")] + [("lr", "multiplier"), ("lr", "shift")]
                + [("lr_shift per layer", True), ("lr_shift per layer", False)]
                + [("rounding", a, b, c) for a in ("trunc", "nearest") for b in ("trunc", "nearest")
                   for c in ("trunc", "nearest")]
                + [("input signed", True), ("input signed", False)]
                + [("accumulator", "explicit"), ("accumulator", "auto")]
                + [("bias frac = weight frac", True), ("bias frac = weight frac", False)]
                + [("feedback", "dense", "table"), ("feedback", "sparse", "table"), ("feedback", "sparse", "lfsr")]
                + [("values", v) for v in ("pm1", "pow2", "fixed")] + [("k", k) for k in (1, 2, 3, 4)]
                + [("projection", p) for p in ("parallel", "serial")]
                + [("pow2 max_shift > 0", True), ("pow2 max_shift > 0", False)])
    missing = [key for key in expected if not seen[key]]
    assert not missing, missing


def test_a_broken_rule_is_named():
    """The checks of a case can fail: each rule of a run's summary, broken on its own."""
    n = 3
    good = {"mismatch": None, "params_equal": True, "counters": {"samples_trained": n, "saturation_events": 5},
            "golden_saturation_events": 5, "results": [{"trained": 1}] * n, "test_failed": False}
    assert _check(good, n) == ""
    broken = [({"mismatch": "first difference: sample 1, tensor h1"}, "mismatch: first difference"),
              ({"params_equal": False}, "final parameters differ"),
              ({"counters": {"samples_trained": n - 1, "saturation_events": 5}}, "samples_trained = 2, not 3"),
              ({"golden_saturation_events": 6}, "saturation events: RTL 5, golden 6"),
              ({"results": [{"trained": 1}, {"trained": 0}, {"trained": 1}]}, "not every sample trained once"),
              ({"test_failed": True}, "the cocotb test failed")]
    for change, reason in broken:
        assert reason in _check({**good, **change}, n)


# seed 10: a dense-feedback DFA network of 3 hidden layers on one lane (two-pass), and a
# sparse k=4 +-2^-s DFA network on 11 lanes with single-port memories (one-pass)
RUN_SEED = 10


@pytest.mark.slow
def test_small_fuzz_run_is_bit_exact(tmp_path):
    out = tmp_path / "fuzz.json"
    rc = _benchmark().main(["--count", "2", "--seed", str(RUN_SEED), "--samples", "60", "--keep-builds",
                            "--json", str(out)])
    summary = json.loads(out.read_text())
    assert summary["failures"] == [] and rc == 0, summary["failures"]
    assert (summary["seed"], summary["count"], summary["passed"], summary["failed"]) == (RUN_SEED, 2, 2, 0)
    assert [c["case_seed"] for c in summary["cases"]] == [case_seed(RUN_SEED, i) for i in range(2)]
    assert [c["config"] for c in summary["cases"]] == [random_config_dict(case_seed(RUN_SEED, i)) for i in range(2)]


@pytest.mark.slow
def test_replay_reruns_the_same_case(tmp_path):
    seed = case_seed(RUN_SEED, 1)
    out = tmp_path / "replay.json"
    rc = _benchmark().main(["--replay", str(seed), "--samples", "60", "--json", str(out)])
    summary = json.loads(out.read_text())
    (case,) = summary["cases"]
    assert rc == 0 and case["passed"], case["reason"]
    assert case["case_seed"] == seed and summary["replay"] == seed
    assert case["config"] == random_config_dict(seed)
    assert (case["idle"], case["backpressure"]) == case_rates(seed)
