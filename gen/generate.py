"""``dfa-engine generate``: Verilog and ``engine.json`` for one configuration.

The Verilog is stable: no source locations (so no absolute paths) and the same bytes for
the same configuration. ``engine.json`` lists the ports, the formats, the host memory map
and the estimated cycles per training sample.
"""

from __future__ import annotations

import json
from pathlib import Path

from amaranth.back import verilog

from dfa_engine.config import ConfigError, EngineConfig
from dfa_engine.feedback import initial_parameters
from dfa_engine.hdl.engine import COUNTERS, Engine, address_layout
from dfa_engine.hdl.feedback import SparseProjection
from dfa_engine.hdl.mac import MACArray
from dfa_engine.hdl.output_error import OutputError
from dfa_engine.hdl.update import UPDATE_LATENCY
from dfa_engine.tables import exp_table

__all__ = ["generate", "generate_loopnest", "loopnest_engine_info", "engine_info", "estimate_cycles", "check_feasible", "memory_bits", "TOP_NAME"]

TOP_NAME = "dfa_engine_top"


def _ceil_div(a, b):
    return -(-a // b)


def estimate_cycles(cfg: EngineConfig) -> dict:
    """Cycles per sample of the controller's schedule (``hdl/engine.py``), phase by phase.

    The MAC-bound passes dominate: forward and update visit ``ceil(n_l / P) * n_{l-1}``
    (group, column) pairs per layer; the fixed costs are a few cycles per pass.
    """
    P, n, L, C = cfg.lanes, cfg.layers, cfg.n_layers, cfg.n_classes
    groups = [_ceil_div(n[l + 1], P) for l in range(L)]
    drain = 4
    one_pass = cfg.schedule == "one_pass"
    # one-pass: the forward pass also applies the previous sample's update (one more
    # pipeline stage), and there is no update pass (a flush costs one only before a host
    # request or a reset, not per sample)
    words = [groups[l] * n[l] for l in range(L)]
    # memory = "spram": single-port weights; a pass that writes words back issues two reads,
    # then stalls while their two write-backs pass (2 cycles a word, the port bound)
    single_port = cfg.memory == "spram"

    lat = UPDATE_LATENCY
    lat_w = 1 + lat       # issue to write-back: the read, then the update unit

    def pass_cycles(w, writes):
        # single-port: lat_w reads, then their lat_w write-backs stall the issue
        return w + lat_w * ((w - 1) // lat_w) if (single_port and writes) else w
    # a one-pass forward pass drains the update unit's stages too
    fwd_drain = drain + 1 + MACArray.PRODUCT_STAGES     # the MAC's stages and the result register
    fwd = sum(pass_cycles(words[l], one_pass) + fwd_drain + (lat if one_pass else 0) for l in range(L))
    fwd_infer = sum(words[l] + fwd_drain + (lat if one_pass else 0) for l in range(L))
    # output error: start, max, exp, divide, a radix-4 multiplication per class
    err = OutputError.cycles(C)
    delta_out = groups[-1]
    # a sparse layer issues one group a cycle into the projection's pipeline
    # (SparseProjection.LATENCY), or one every C + 1 cycles when it reads e one class a
    # cycle (hardware.projection = "serial"); a dense one a group every C cycles (one
    # class each) into its MAC array, whose result the next cycle writes
    if cfg.feedback.kind == "sparse":
        per_group = C + 1 if cfg.projection == "serial" else 1
        dfa_layer = [groups[l] * per_group + 1 + SparseProjection.LATENCY for l in range(L - 1)]
    else:
        dfa_layer = [groups[l] * C + 2 for l in range(L - 1)]
    dfa = max([dfa_layer[l] for l in range(L - 1) if cfg.methods[l] == "dfa"], default=0) + 1
    # DELTA_BP_NEXT visits each hidden layer once (top down) when some layer uses BP, a BP
    # layer adding its transposed pass and drain; without one it is a single cycle
    has_bp = any(cfg.methods[l] == "bp" for l in range(L - 1))
    bp = (sum(n[l + 1] * groups[l + 1] + drain for l in range(L - 1) if cfg.methods[l] == "bp")
          + (L - 1 if has_bp else 1))
    upd_pass = [pass_cycles(words[l], True) + drain + lat - 1 for l in range(L)]
    upd = 1 if one_pass else 1 + sum(upd_pass)   # one-pass: COMMIT
    load = n[0] + 1
    result = 1
    train = load + fwd + err + delta_out + dfa + bp + upd + result
    ideal = 2 * sum(n[l] * n[l + 1] for l in range(L)) / P
    return {"load": load, "forward": fwd, "output_error": err, "deltas": delta_out + dfa + bp,
            "update": upd, "result": result, "train_sample": train,
            "infer_sample": load + fwd_infer + err + result,
            "ideal_train_sample": ideal, "ratio_to_ideal": train / ideal,
            "one_pass_bound": ideal / 2, "ratio_to_one_pass_bound": train / (ideal / 2),
            # every weight word read and written once, one port access a cycle
            "port_bound": 2 * sum(words) if single_port else None,
            "ratio_to_port_bound": train / (2 * sum(words)) if single_port else None}


def engine_info(cfg: EngineConfig, top: Engine | None = None) -> dict:
    top = top or Engine(cfg)
    fields = address_layout(cfg, cfg.lanes)
    ports = {}
    for name, member in top.signature.members.items():
        ports[name] = {"direction": "in" if member.flow.value == "In" else "out",
                       "payload_bits": member.signature.members["payload"].shape.size}
    return {
        "top": TOP_NAME,
        "network": list(cfg.layers),
        "methods": list(cfg.methods),
        "lanes": cfg.lanes,
        "config": cfg.to_dict(),
        "formats": {name: getattr(cfg.formats, name).to_dict() for name in
                    ("input", "weight", "bias", "activation", "error", "feedback", "delta", "update",
                     "learning_rate")},
        "accumulator_bits": [cfg.required_accumulator_bits(l) for l in range(cfg.n_layers)],
        "ports": ports,
        "stream_signal_names": "<port>__valid, <port>__ready, <port>__payload (Amaranth joins member paths with __)",
        "memory_map": {
            "address_fields_low_to_high": fields,
            "kinds": {"0": "weight W[layer][row, column]", "1": "bias b[layer][row] (column 0)",
                      "2": "counter (index in the bits below kind; read-only)"},
            "row": "row = group * lanes + lane",
            "counters": list(COUNTERS),
            "write_response": "data = the previous value; error = 1 if refused (outside the map, value outside the format, or a counter)",
        },
        "exp_table": exp_table(cfg),
        "cycles_per_sample": estimate_cycles(cfg),
        "memory_bits": memory_bits(cfg),
    }


#: Largest total on-chip memory the generator accepts (bits): beyond the largest FPGAs the
#: open flows target (an ECP5-85F has 3.7 Mbit of block RAM; a UP5K 1 Mbit of SPRAM).
MAX_MEMORY_BITS = 16 * 1024 * 1024


def memory_bits(cfg: EngineConfig) -> int:
    """Bits of every memory the engine instantiates (``hdl/engine.py``)."""
    f, P, n, L = cfg.formats, cfg.lanes, cfg.layers, cfg.n_layers
    G = [_ceil_div(n[l + 1], P) for l in range(L)]
    bits = sum(G[l] * P * (n[l] * f.weight.width + f.bias.width + f.delta.width) for l in range(L))
    bits += _ceil_div(n[0], P) * P * f.input.width
    bits += sum(G[l] * P * (f.activation.width + 1) for l in range(L - 1))
    for l in range(L - 1):
        if cfg.methods[l] == "dfa" and cfg.feedback.kind == "dense":
            bits += G[l] * P * cfg.n_classes * f.feedback.width
        elif cfg.methods[l] == "dfa" and cfg.feedback.storage == "table":
            from dfa_engine.hdl.feedback import entry_layout

            bits += G[l] * P * cfg.feedback.k * entry_layout(cfg).size
    return bits


def check_feasible(cfg: EngineConfig) -> None:
    """Fail at once, naming the limit, for a configuration the generator would not build well."""
    widest = max(cfg.layers[1:])
    if cfg.lanes > widest:
        raise ConfigError("hardware.lanes", cfg.lanes,
                          f"exceeds the widest layer ({widest} neurons): the extra lanes could never be used")
    bits = memory_bits(cfg)
    if bits > MAX_MEMORY_BITS:
        raise ConfigError("network.layers", list(cfg.layers),
                          f"needs {bits:,} bits of on-chip memory; the generator's limit is {MAX_MEMORY_BITS:,}")


def generate(cfg: EngineConfig, out_dir, init_parameters: bool = True) -> dict:
    """Write ``<out>/dfa_engine_top.v`` and ``<out>/engine.json``; returns the info dict.

    ``init_parameters=False`` leaves the weight and bias memories without initial contents
    (the host loads them); simulation builds use it to keep Verilator's C++ small."""
    from dfa_engine.hdl.family import engine_family

    if engine_family(cfg).name != "mlp":
        return generate_loopnest(cfg, out_dir, init_parameters)
    check_feasible(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    top = Engine(cfg, params=initial_parameters(cfg), init_parameters=init_parameters)
    text = verilog.convert(top, name=TOP_NAME, emit_src=False, strip_internal_attrs=True)
    (out / f"{TOP_NAME}.v").write_text(text)
    info = engine_info(cfg, top)
    (out / "engine.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def loopnest_engine_info(cfg, top=None) -> dict:
    """``engine.json`` of a CNN or RNN engine (``hdl/loopnest.py``): ports, formats, host map,
    schedule and cycles."""
    from dfa_engine.hdl.family import engine_family
    from dfa_engine.hdl.loopnest import schedule_cycles

    fam = engine_family(cfg)
    if top is None:
        top = fam.engine(cfg, init_parameters=False)
        top._MustUse__silence = True          # only its signature and schedule are read
    ports = {name: {"direction": "in" if member.flow.value == "In" else "out",
                    "payload_bits": member.signature.members["payload"].shape.size}
             for name, member in top.signature.members.items()}
    fwd, bwd = top.programs()
    weights = {"cnn": "row-major (c_out, c_in/groups, ky, kx) (dense: (out, in))",
               "rnn": "layer 0: W1 = [W_x | W_h], row-major H x (I + H); layer 1: W_2, row-major C x H"}[fam.name]
    return {
        "top": TOP_NAME,
        "family": fam.name,
        "network": cfg.network_name if hasattr(cfg, "network_name") else None,
        "config": cfg.to_dict(),
        "lanes": 1,
        "ports": ports,
        "stream_signal_names": "<port>__valid, <port>__ready, <port>__payload (Amaranth joins member paths with __)",
        "memory_map": {
            "address_fields_low_to_high": dict(top._addr),
            "kinds": {"0": f"weight W[layer][index], index {weights}", "1": "bias b[layer][index]",
                      "2": "counter (index; read-only)"},
            "counters": list(fam.counters),
            "write_response": "data = the previous value; error = 1 if refused (outside the map, value outside the format, or a counter)",
        },
        "schedule": [{"pass": p.kind, "layer": p.layer, "outer": list(p.outer), "inner": list(p.inner),
                      "cycles": p.cycles} for p in list(fwd) + list(bwd)],
        "cycles_per_sample": schedule_cycles(fwd, bwd, fam.n_inputs(cfg), cfg),
    }


def generate_loopnest(cfg, out_dir, init_parameters: bool = True) -> dict:
    """A CNN or RNN engine's ``dfa_engine_top.v`` and ``engine.json`` (see :func:`generate`)."""
    from dfa_engine.hdl.family import engine_family

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    top = engine_family(cfg).engine(cfg, init_parameters=init_parameters)
    text = verilog.convert(top, name=TOP_NAME, emit_src=False, strip_internal_attrs=True)
    (out / f"{TOP_NAME}.v").write_text(text)
    info = loopnest_engine_info(cfg, top)
    (out / "engine.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
