"""The configuration of a fixed-point RNN engine (``docs/numerics.md`` section 13).

A TOML file, parsed as data only, like the MLP's (:mod:`dfa_engine.config`) and the CNN's
(:mod:`dfa_engine.cnn_config`): the same ``[formats]``, ``[rounding]``, ``[training]``,
``[feedback]`` (the MLP's dense or sparse feedback) and ``[softmax]`` sections, and a
``[network]`` section for one Elman recurrent layer with a readout at the last step::

    [network]
    inputs = 28          # I: values per time step
    hidden = 128         # H: recurrent neurons
    classes = 10         # C: outputs of the readout
    steps = 28           # T: time steps per sequence
    activation = "hardtanh"
    method = "dfa"       # DFA through time: no backward pass through time ("bptt": truncated BPTT)
    window = 4           # the last 4 steps receive the error; "all" = every step, "last" = 1
    cell = "elman"       # or "leaky": h_t = h_{t-1} + (f(a_t) - h_{t-1}) >> s_i (section 13.9)
    leak_max_shift = 4   # leaky: s_i = i mod (leak_max_shift + 1)
    trace = true         # leaky DFA: weight the window's steps by each neuron's eligibility trace

Every invalid field raises :class:`~dfa_engine.config.ConfigError` with the field, the
value and the rule, e.g. ``network.window: 40 is out of range; must be 1 <= window <= 28``.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import (_read_formats, _read_learning_rate, _read_rounding_no_stochastic, ACTIVATIONS, FEEDBACK_KINDS, FEEDBACK_STORAGE, FEEDBACK_VALUES, FORMAT_NAMES,
                     ConfigError, EngineConfig, FeedbackConfig, Formats, _check_schema, _choice, _int, _is_int,
                     validate_formats)

__all__ = ["RNNEngineConfig", "rnn_config_from_dict", "load_rnn_config", "validate_rnn", "RNN_METHODS", "RNN_CELLS",
           "MAX_LEAK_SHIFT", "leak_shifts"]

#: Training methods of the recurrent layer in fixed point: DFA through time (no backward
#: pass through time), and BPTT truncated to the window (the baseline, section 13.8).
RNN_METHODS = ("dfa", "bptt")
#: Recurrent cells: Elman, and the leaky integrator with a power-of-two leak per neuron (13.9).
RNN_CELLS = ("elman", "leaky")
#: Largest leak shift (a time constant of 2^15 steps).
MAX_LEAK_SHIFT = 15
_SCHEMA = {
    "network": {"inputs", "hidden", "classes", "steps", "activation", "method", "window", "cell", "leak_max_shift",
                "trace"},
    "formats": set(FORMAT_NAMES) | {"accumulator"},
    "rounding": {"forward", "backward", "update"},
    "training": {"lr_shift", "learning_rate", "epochs", "seed"},
    "feedback": {"kind", "k", "values", "max_shift", "storage", "seed"},
    "softmax": {"table_frac_bits", "table_size"},
}


def leak_shifts(hidden: int, max_shift: int) -> list:
    """The leaky cell's per-neuron shifts ``s_i = i mod (max_shift + 1)`` (``alpha_i = 2^-s_i``):
    every time constant from 1 to ``2^max_shift`` steps equally often, and nothing to store
    (a counter in hardware). One definition for the float model and the golden model."""
    return [i % (max_shift + 1) for i in range(hidden)]


# Largest exact sum the golden model forms in float64 BLAS, and largest int64 product.
_MAX_EXACT_BITS = 53
_MAX_PRODUCT_BITS = 62


@dataclass(frozen=True)
class RNNEngineConfig:
    """One recurrent layer (layer 1: ``W_x`` ``(H, I)``, ``W_h`` ``(H, H)``, ``b_1`` ``(H,)``)
    and a dense readout of ``h_T`` (layer 2: ``W_2`` ``(C, H)``, ``b_2`` ``(C,)``)."""

    inputs: int
    hidden: int
    classes: int
    steps: int
    activation: str
    formats: Formats
    method: str = "dfa"
    window: int = 1               # the last ``window`` steps receive the error (1 .. steps)
    rounding_forward: str = "nearest"
    rounding_backward: str = "nearest"
    rounding_update: str = "nearest"
    lr_shift: tuple = ()          # (recurrent layer, readout); used when lr_multiplier is None
    lr_multiplier: float | None = None
    epochs: int = 10
    seed: int = 0
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    softmax_table_frac_bits: int = 4
    softmax_table_size: int = 128
    cell: str = "elman"
    leak_max_shift: int = 0       # leaky: s_i = i mod (leak_max_shift + 1); Elman: 0
    trace: bool = True            # leaky DFA: the eligibility-trace weighting (False: alpha g each step)

    # ---- derived ---------------------------------------------------------------------
    @property
    def leak_shifts(self) -> list:
        """Per-neuron leak shifts (all 0 for the Elman cell, whose state is replaced each step)."""
        return leak_shifts(self.hidden, self.leak_max_shift if self.cell == "leaky" else 0)

    @property
    def n_classes(self) -> int:
        return self.classes

    @property
    def n_layers(self) -> int:
        return 2

    @property
    def z_frac(self) -> int:
        """Fraction bits of the recurrent layer's exact sum ``z_t``: ``F_w + max(F_in, F_a)``."""
        f = self.formats
        return f.weight.frac_bits + max(f.input.frac_bits, f.activation.frac_bits)

    @property
    def y_frac(self) -> int:
        """Fraction bits of the readout's exact sum: ``F_w + F_a``."""
        return self.formats.weight.frac_bits + self.formats.activation.frac_bits

    def required_accumulator_bits(self, layer: int) -> int:
        """Bits of the exact sum of layer ``layer`` (0: recurrent, ``I + H + 1`` terms; 1:
        readout, ``H + 1`` terms), every term aligned to the sum's fraction bits."""
        f = self.formats
        if layer == 0:
            zf = self.z_frac
            terms = (f.weight.width + f.input.width + zf - f.weight.frac_bits - f.input.frac_bits,
                     f.weight.width + f.activation.width + zf - f.weight.frac_bits - f.activation.frac_bits,
                     f.bias.width + zf - f.bias.frac_bits)
            return max(terms) + math.ceil(math.log2(self.inputs + self.hidden + 1))
        terms = (f.weight.width + f.activation.width, f.bias.width + self.y_frac - f.bias.frac_bits)
        return max(terms) + math.ceil(math.log2(self.hidden + 1))

    def accumulator_bits(self) -> int:
        if self.formats.accumulator is not None:
            return self.formats.accumulator
        return max(self.required_accumulator_bits(0), self.required_accumulator_bits(1))

    def lr(self, layer: int):
        """``(lr_raw, F_lr)`` of layer ``layer`` (0: recurrent, 1: readout), section 6."""
        if self.lr_multiplier is None:
            return 1, self.lr_shift[layer]
        f = self.formats.learning_rate
        return int(f.from_float(self.lr_multiplier)), f.frac_bits

    def feedback_engine_config(self) -> EngineConfig:
        """The MLP configuration ``inputs - hidden - classes`` whose hidden layer is the recurrent
        layer: the project's one feedback generator (:mod:`dfa_engine.feedback`) draws ``B``
        from it (stream 0 of ``feedback.seed``), with this configuration's feedback format.
        Building it also applies the MLP's feedback rules (section 5)."""
        from .config import default_config

        base = default_config()
        shifts = self.lr_shift if self.lr_shift else (0, 0)
        return base.with_(layers=(self.inputs, self.hidden, self.classes), methods=("dfa",), activation=self.activation,
                          formats=replace(self.formats, accumulator=None), lr_shift=tuple(shifts),
                          lr_multiplier=self.lr_multiplier, feedback=self.feedback,
                          rounding_forward=self.rounding_forward, rounding_backward=self.rounding_backward,
                          rounding_update=self.rounding_update,
                          softmax_table_frac_bits=self.softmax_table_frac_bits,
                          softmax_table_size=self.softmax_table_size)

    @property
    def network_name(self) -> str:
        """``in{I}-rnn{H}x{T}-fc{C}``: inputs per step, the Elman layer over ``T`` steps, the readout."""
        return f"in{self.inputs}-rnn{self.hidden}x{self.steps}-fc{self.classes}"

    @property
    def lanes(self) -> int:
        """Multiply-accumulate lanes of the generated RNN engine (``hdl/rnn_engine.py``): one."""
        return 1

    @property
    def methods(self) -> tuple:
        """The recurrent layer's method (``dfa``), as the other configurations list theirs."""
        return (self.method,)

    def with_(self, **changes) -> "RNNEngineConfig":
        cfg = replace(self, **changes)
        validate_rnn(cfg)
        return cfg

    def to_dict(self) -> dict:
        return {
            "network": {"inputs": self.inputs, "hidden": self.hidden, "classes": self.classes, "steps": self.steps,
                        "activation": self.activation, "method": self.method, "window": self.window,
                        "cell": self.cell, "leak_max_shift": self.leak_max_shift, "trace": self.trace},
            "formats": {**{n: str(getattr(self.formats, n)) for n in FORMAT_NAMES},
                        "accumulator": self.accumulator_bits()},
            "rounding": {"forward": self.rounding_forward, "backward": self.rounding_backward,
                         "update": self.rounding_update},
            "training": {"lr_shift": list(self.lr_shift), "learning_rate": self.lr_multiplier,
                         "epochs": self.epochs, "seed": self.seed},
            "feedback": vars(self.feedback).copy(),
            "softmax": {"table_frac_bits": self.softmax_table_frac_bits, "table_size": self.softmax_table_size},
        }


# ---- parsing ---------------------------------------------------------------------------

def rnn_config_from_dict(data: dict) -> RNNEngineConfig:
    """Build and validate an RNN configuration from parsed TOML (missing fields take defaults)."""
    _check_schema(data, _SCHEMA)
    net, fmt, rnd = data.get("network", {}), data.get("formats", {}), data.get("rounding", {})
    trn, fbk, smx = data.get("training", {}), data.get("feedback", {}), data.get("softmax", {})

    inputs = _int("network", "inputs", net.get("inputs", 28), 1, 65536)
    hidden = _int("network", "hidden", net.get("hidden", 128), 1, 65536)
    classes = _int("network", "classes", net.get("classes", 10), 2, 65536)
    steps = _int("network", "steps", net.get("steps", 28), 1, 65536)
    activation = _choice("network", "activation", net.get("activation", "hardtanh"), ACTIVATIONS)
    method = _choice("network", "method", net.get("method", "dfa"), RNN_METHODS)
    window = net.get("window", "all")
    if window == "all":
        window = steps
    elif window == "last":
        window = 1
    elif not _is_int(window):
        raise ConfigError("network.window", window, "must be \"all\", \"last\" or an integer number of steps")
    _int("network", "window", window, 1, steps)
    cell = _choice("network", "cell", net.get("cell", "elman"), RNN_CELLS)
    leak_max_shift = _int("network", "leak_max_shift", net.get("leak_max_shift", 4 if cell == "leaky" else 0), 0,
                          MAX_LEAK_SHIFT)
    if cell == "elman" and leak_max_shift:
        raise ConfigError("network.leak_max_shift", leak_max_shift, "applies to cell = \"leaky\" only")
    trace = net.get("trace", True)
    if not isinstance(trace, bool):
        raise ConfigError("network.trace", trace, "must be true or false")
    if cell == "elman" and "trace" in net:
        raise ConfigError("network.trace", trace, "applies to cell = \"leaky\" only")

    formats, acc = _read_formats(fmt)

    modes = _read_rounding_no_stochastic(rnd, "RNN")

    lr_multiplier, lr_shift = _read_learning_rate(trn, 2, ": [recurrent layer, readout]", max_shift=30)

    feedback = FeedbackConfig(
        kind=_choice("feedback", "kind", fbk.get("kind", "sparse"), FEEDBACK_KINDS),
        k=_int("feedback", "k", fbk.get("k", 1), 1, classes),
        values=_choice("feedback", "values", fbk.get("values", "pm1"), FEEDBACK_VALUES),
        max_shift=_int("feedback", "max_shift", fbk.get("max_shift", 0), 0, 15),
        storage=_choice("feedback", "storage", fbk.get("storage", "table"), FEEDBACK_STORAGE),
        seed=_int("feedback", "seed", fbk.get("seed", 1), 0, 2**32 - 1),
    )
    cfg = RNNEngineConfig(
        inputs=inputs, hidden=hidden, classes=classes, steps=steps, activation=activation,
        formats=Formats(accumulator=acc, **formats), method=method, window=window,
        rounding_forward=modes["forward"], rounding_backward=modes["backward"], rounding_update=modes["update"],
        lr_shift=lr_shift, lr_multiplier=lr_multiplier,
        epochs=_int("training", "epochs", trn.get("epochs", 10), 1, 100000),
        seed=_int("training", "seed", trn.get("seed", 0), 0, 2**32 - 1),
        feedback=feedback,
        softmax_table_frac_bits=_int("softmax", "table_frac_bits", smx.get("table_frac_bits", 4), 0, 8),
        softmax_table_size=_int("softmax", "table_size", smx.get("table_size", 128), 2, 4096),
        cell=cell, leak_max_shift=leak_max_shift, trace=trace,
    )
    validate_rnn(cfg)
    return cfg


def validate_rnn(cfg: RNNEngineConfig) -> None:
    """Cross-field rules (formats against the network, exactness bounds); the feedback rules
    are the MLP's (checked by building :meth:`RNNEngineConfig.feedback_engine_config`)."""
    f = cfg.formats
    validate_formats(f)
    for name, frac, site in (("bias", cfg.z_frac, "recurrent"), ("bias", cfg.y_frac, "readout"),
                             ("activation", cfg.z_frac, "recurrent"), ("activation", cfg.y_frac, "readout")):
        if getattr(f, name).frac_bits > frac:
            raise ConfigError(f"formats.{name}", str(getattr(f, name)),
                              f"has more fraction bits than the {site} layer's exact sum ({frac})")
    for layer, site in ((0, "recurrent layer"), (1, "readout")):
        need = cfg.required_accumulator_bits(layer)
        if need > _MAX_EXACT_BITS:
            raise ConfigError("formats.weight", str(f.weight),
                              f"makes the {site}'s exact sum {need} bits; the limit is {_MAX_EXACT_BITS}")
        if f.accumulator is not None and f.accumulator < need:
            terms = cfg.inputs + cfg.hidden + 1 if layer == 0 else cfg.hidden + 1
            raise ConfigError("formats.accumulator", f.accumulator,
                              f"is too narrow: the {site} needs {need} bits to sum {terms} terms exactly")
    lr_bits = f.learning_rate.width if cfg.lr_multiplier is not None else 1
    # the weight-gradient sums over the window (section 13.5), then times the learning rate
    for name, width in (("input", f.input.width), ("activation", f.activation.width)):
        upd = f.delta.width + width + math.ceil(math.log2(cfg.window + 1))
        if upd > _MAX_EXACT_BITS or upd + lr_bits > _MAX_PRODUCT_BITS:
            raise ConfigError("network.window", cfg.window,
                              f"makes the weight-gradient sum over the window {upd} bits with formats.delta "
                              f"{f.delta} and formats.{name} (+{lr_bits} learning-rate bits); "
                              f"the limits are {_MAX_EXACT_BITS} and {_MAX_PRODUCT_BITS}")
    if cfg.method == "bptt":
        # the transposed sums of BPTT: W_2^T delta_2 (C terms) and W_h^T delta_{t+1} (H terms)
        # (the leaky cell adds the kept part of dL/dh_t: one more term)
        bp = f.weight.width + f.delta.width + math.ceil(math.log2(max(cfg.classes, cfg.hidden) + 2))
        if bp > _MAX_EXACT_BITS:
            raise ConfigError("formats.delta", str(f.delta),
                              f"makes the BPTT sums {bp} bits with formats.weight {f.weight}; the limit is "
                              f"{_MAX_EXACT_BITS}")
    fb_bits = f.error.width + f.feedback.width + math.ceil(math.log2(cfg.classes + 1))
    if fb_bits > _MAX_EXACT_BITS:
        raise ConfigError("formats.feedback", str(f.feedback),
                          f"makes the feedback sum B e {fb_bits} bits; the limit is {_MAX_EXACT_BITS}")
    if cfg.softmax_table_size & (cfg.softmax_table_size - 1):
        raise ConfigError("softmax.table_size", cfg.softmax_table_size, "must be a power of two")
    if cfg.softmax_table_frac_bits > f.activation.frac_bits:
        raise ConfigError("softmax.table_frac_bits", cfg.softmax_table_frac_bits,
                          f"exceeds the activation format's {f.activation.frac_bits} fraction bits")
    if cfg.lr_multiplier is not None:
        raw = int(f.learning_rate.from_float(cfg.lr_multiplier))
        if raw < 1 or cfg.lr_multiplier > f.learning_rate.max_value + f.learning_rate.lsb / 2:
            raise ConfigError("training.learning_rate", cfg.lr_multiplier,
                              f"is not representable in formats.learning_rate {f.learning_rate}")
    cfg.feedback_engine_config()     # the MLP's feedback rules (kind/values, k, max_shift, format)


def load_rnn_config(path) -> RNNEngineConfig:
    """Load an RNN configuration TOML."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("(file)", str(path), "does not exist or is not a file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("(file)", str(path), "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"({p.name})", "TOML", f"does not parse: {exc}") from None
    return rnn_config_from_dict(data)
