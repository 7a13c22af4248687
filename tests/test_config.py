"""Configuration loading: the default, a complete round trip, and one-line errors."""

import tomllib
from dataclasses import fields
from importlib import resources

import pytest

from dfa_engine.config import (ConfigError, EngineConfig, FeedbackConfig, Formats, config_from_dict,
                               default_config, load_config)
from dfa_engine.fixed import FixedFormat

BASE = '[network]\nlayers = [6, 5, 4]\n'
SECTIONS = "network, formats, rounding, training, feedback, softmax, hardware"


def _load_text(tmp_path, text, name="bad.toml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return load_config(p)


# ---- the default --------------------------------------------------------------------------

def test_default_loads():
    cfg = default_config()
    assert isinstance(cfg, EngineConfig)
    assert cfg.layers == (784, 128, 10)
    assert cfg.activation == "hardtanh" and cfg.methods == ("dfa",)
    f = cfg.formats
    assert [str(getattr(f, n)) for n in ("input", "weight", "bias", "activation", "error", "feedback",
                                         "delta", "update", "learning_rate")] == [
        "u0.8", "s1.14", "s1.14", "s5.10", "s1.14", "s1.6", "s1.14", "s1.14", "u0.16"]
    assert f.accumulator is None
    assert (cfg.rounding_forward, cfg.rounding_backward, cfg.rounding_update) == ("nearest",) * 3
    assert cfg.lr_shift == (6, 6) and cfg.lr_multiplier is None
    assert (cfg.epochs, cfg.seed) == (10, 0)
    assert cfg.feedback == FeedbackConfig("sparse", 1, "pm1", 0, "table", 1)
    assert (cfg.softmax_table_frac_bits, cfg.softmax_table_size) == (4, 128)
    assert (cfg.lanes, cfg.memory) == (16, "auto")
    assert (cfg.n_layers, cfg.n_hidden, cfg.n_classes, cfg.network_name) == (2, 1, 10, "784-128-10")


def test_default_file_and_empty_dict_agree():
    path = resources.files("dfa_engine").joinpath("configs/default.toml")
    assert load_config(str(path)) == default_config() == config_from_dict({})


COMPLETE = '''
[network]
layers = [12, 9, 7, 5]
activation = "hardtanh"
methods = ["bp", "dfa"]

[formats]
input = "u1.7"
weight = "s2.13"
bias = "s2.12"
activation = "s4.9"
accumulator = 40
error = "s1.12"
feedback = "s2.5"
delta = "s1.13"
update = "s0.13"
learning_rate = "u0.12"

[rounding]
forward = "trunc"
backward = "trunc"
update = "stochastic"
seed = 99

[training]
learning_rate = 0.125
epochs = 3
seed = 42

[feedback]
kind = "sparse"
k = 3
values = "pow2"
max_shift = 4
storage = "lfsr"
seed = 5

[softmax]
table_frac_bits = 3
table_size = 64

[hardware]
lanes = 8
memory = "spram"
'''


def _to_toml(cfg: EngineConfig) -> str:
    """Serialize a configuration back to the file format (written here, independently)."""
    f = cfg.formats

    def s(v):
        return f'"{v}"' if isinstance(v, str) else ("[" + ", ".join(s(x) for x in v) + "]"
                                                     if isinstance(v, (list, tuple)) else repr(v))
    lines = ["[network]", f"layers = {s(cfg.layers)}", f"activation = {s(cfg.activation)}",
             f"methods = {s(cfg.methods)}", "[formats]"]
    lines += [f'{n} = "{getattr(f, n)}"' for n in ("input", "weight", "bias", "activation", "error",
                                                   "feedback", "delta", "update", "learning_rate")]
    lines += [f"accumulator = {s('auto' if f.accumulator is None else f.accumulator)}", "[rounding]",
              f"forward = {s(cfg.rounding_forward)}", f"backward = {s(cfg.rounding_backward)}",
              f"update = {s(cfg.rounding_update)}", f"seed = {cfg.rounding_seed}", "[training]"]
    lines += ([f"learning_rate = {cfg.lr_multiplier!r}"] if cfg.lr_multiplier is not None
              else [f"lr_shift = {s(cfg.lr_shift)}"])
    fb = cfg.feedback
    lines += [f"epochs = {cfg.epochs}", f"seed = {cfg.seed}", "[feedback]", f"kind = {s(fb.kind)}",
              f"k = {fb.k}", f"values = {s(fb.values)}", f"max_shift = {fb.max_shift}",
              f"storage = {s(fb.storage)}", f"seed = {fb.seed}", "[softmax]",
              f"table_frac_bits = {cfg.softmax_table_frac_bits}", f"table_size = {cfg.softmax_table_size}",
              "[hardware]", f"lanes = {cfg.lanes}", f"memory = {s(cfg.memory)}"]
    return "\n".join(lines) + "\n"


def test_complete_file_round_trip(tmp_path):
    cfg = _load_text(tmp_path, COMPLETE, "complete.toml")
    P = FixedFormat.parse
    assert cfg == EngineConfig(
        layers=(12, 9, 7, 5), activation="hardtanh", methods=("bp", "dfa"),
        formats=Formats(input=P("u1.7"), weight=P("s2.13"), bias=P("s2.12"), activation=P("s4.9"),
                        error=P("s1.12"), feedback=P("s2.5"), delta=P("s1.13"), update=P("s0.13"),
                        learning_rate=P("u0.12"), accumulator=40),
        rounding_forward="trunc", rounding_backward="trunc", rounding_update="stochastic",
        lr_shift=(), lr_multiplier=0.125, epochs=3, seed=42, rounding_seed=99,
        feedback=FeedbackConfig(kind="sparse", k=3, values="pow2", max_shift=4, storage="lfsr", seed=5),
        softmax_table_frac_bits=3, softmax_table_size=64, lanes=8, memory="spram")
    assert cfg.accumulator_bits(0) == 40 and cfg.dfa_share() == 0.5
    # Write it back, load it again: the same configuration, field by field.
    again = _load_text(tmp_path, _to_toml(cfg), "again.toml")
    for fld in fields(EngineConfig):
        assert getattr(again, fld.name) == getattr(cfg, fld.name), fld.name
    # And the default, which uses lr_shift and accumulator = "auto".
    assert _load_text(tmp_path, _to_toml(default_config()), "d.toml") == default_config()


def test_lr_shift_list_and_scalar(tmp_path):
    assert _load_text(tmp_path, BASE + "[training]\nlr_shift = [2, 9]\n").lr_shift == (2, 9)
    assert _load_text(tmp_path, BASE + "[training]\nlr_shift = 0\n").lr_shift == (0, 0)


def test_with_validates():
    cfg = default_config()
    assert cfg.with_(lanes=4).lanes == 4
    with pytest.raises(ConfigError) as exc:
        cfg.with_(softmax_table_size=100)
    assert str(exc.value) == "softmax.table_size: 100 must be a power of two"


# ---- invalid configurations ---------------------------------------------------------------

FMT_MSG = "is not a format; write s<int>.<frac> or u<int>.<frac>, e.g. 's3.12'"

INVALID = [
    # structure
    ("unknown-section", "[netwrk]\nlayers = [6, 5, 4]\n",
     f"netwrk: '[table]' is not a known section; known: {SECTIONS}"),
    ("unknown-top-level-key", "layers = [6, 5, 4]\n",
     f"layers: [6, 5, 4] is not a known section; known: {SECTIONS}"),
    ("unknown-key", "[network]\nlayer = [6, 5, 4]\n",
     "network.layer: [6, 5, 4] is not a known field; known: activation, layers, method, methods"),
    ("unknown-key-hardware", BASE + "[hardware]\nclock = 100\n",
     "hardware.clock: 100 is not a known field; known: lanes, memory, projection, schedule"),
    ("section-not-table", "network = [6, 5, 4]\n",
     "network: [6, 5, 4] must be a table ([network])"),
    ("array-of-tables-for-table", BASE + "[[training]]\nepochs = 3\n",
     "training: [{'epochs': 3}] must be a table ([training])"),
    # types
    ("string-for-int", BASE + '[training]\nepochs = "10"\n', "training.epochs: '10' must be an integer"),
    ("bool-for-int", BASE + "[hardware]\nlanes = true\n", "hardware.lanes: True must be an integer"),
    ("float-for-int", BASE + "[feedback]\nk = 1.0\n", "feedback.k: 1.0 must be an integer"),
    ("string-for-layer", '[network]\nlayers = [6, "5", 4]\n', "network.layers[1]: '5' must be an integer"),
    ("table-for-list", "[network]\nlayers = {a = 1}\n",
     "network.layers: {'a': 1} must be a list of at least 2 layer sizes (input ... classes)"),
    ("int-for-format", BASE + "[formats]\nweight = 16\n",
     "formats.weight: 16 is not a valid format: a format is a string like 's3.12', not 16"),
    ("accumulator-string", BASE + '[formats]\naccumulator = "wide"\n',
     "formats.accumulator: 'wide' must be \"auto\" or an integer number of bits"),
    # ranges
    ("k-zero", BASE + "[feedback]\nk = 0\n", "feedback.k: 0 is out of range; must be 1 <= k <= 4"),
    ("k-above-classes", BASE + "[feedback]\nk = 5\n", "feedback.k: 5 is out of range; must be 1 <= k <= 4"),
    ("lanes-zero", BASE + "[hardware]\nlanes = 0\n", "hardware.lanes: 0 is out of range; must be 1 <= lanes <= 1024"),
    ("lr-shift-negative", BASE + "[training]\nlr_shift = -1\n",
     "training.lr_shift[0]: -1 is out of range; must be 0 <= lr_shift[0] <= 24"),
    ("lr-shift-list-entry", BASE + "[training]\nlr_shift = [3, 25]\n",
     "training.lr_shift[1]: 25 is out of range; must be 0 <= lr_shift[1] <= 24"),
    ("lr-shift-list-length", BASE + "[training]\nlr_shift = [3, 3, 3]\n",
     "training.lr_shift: [3, 3, 3] must be an integer or a list of 2 integers, one per layer"),
    ("epochs-zero", BASE + "[training]\nepochs = 0\n",
     "training.epochs: 0 is out of range; must be 1 <= epochs <= 100000"),
    ("seed-negative", BASE + "[training]\nseed = -1\n",
     "training.seed: -1 is out of range; must be 0 <= seed <= 4294967295"),
    ("layer-zero", "[network]\nlayers = [6, 0, 4]\n",
     "network.layers[1]: 0 is out of range; must be 1 <= layers[1] <= 65536"),
    ("one-layer", "[network]\nlayers = [6]\n",
     "network.layers: [6] must be a list of at least 2 layer sizes (input ... classes)"),
    ("one-class", "[network]\nlayers = [6, 5, 1]\n", "network.layers[-1]: 1 must be at least 2 (the number of classes)"),
    ("table-size-range", BASE + "[softmax]\ntable_size = 8192\n",
     "softmax.table_size: 8192 is out of range; must be 2 <= table_size <= 4096"),
    # formats
    ("bad-format-string", BASE + '[formats]\nweight = "s1,14"\n',
     f"formats.weight: 's1,14' is not a valid format: 's1,14' {FMT_MSG}"),
    ("bad-format-letter", BASE + '[formats]\ninput = "q0.8"\n',
     f"formats.input: 'q0.8' is not a valid format: 'q0.8' {FMT_MSG}"),
    ("format-too-wide", BASE + '[formats]\nweight = "s40.10"\n',
     "formats.weight: 's40.10' is not a valid format: format width must be 1..48 bits, not 51 (s40.10)"),
    ("unsigned-weight", BASE + '[formats]\nweight = "u1.14"\n', "formats.weight: 'u1.14' must be signed (s<int>.<frac>)"),
    ("unsigned-delta", BASE + '[formats]\ndelta = "u1.14"\n', "formats.delta: 'u1.14' must be signed (s<int>.<frac>)"),
    ("signed-learning-rate", BASE + '[formats]\nlearning_rate = "s0.15"\n',
     "formats.learning_rate: 's0.15' must be unsigned (u<int>.<frac>)"),
    ("update-frac-differs", BASE + '[formats]\nupdate = "s1.12"\n',
     "formats.update: 's1.12' must have the weight's 14 fraction bits (weight is s1.14)"),
    # layer 1: s1.14 x u0.8 products are 24 bits, 7 terms (6 + bias): 24 + 3 = 27 bits.
    ("accumulator-too-narrow", BASE + "[formats]\naccumulator = 20\n",
     "formats.accumulator: 20 is too narrow: layer 1 needs 27 bits to sum 6 products exactly"),
    ("accumulator-inexact", '[network]\nlayers = [100, 5, 4]\n[formats]\nweight = "s1.40"\nupdate = "s1.40"\n',
     "formats.weight: 's1.40' makes layer 1's exact accumulator 57 bits; the limit is 53"),
    ("bias-frac-above-accumulator", BASE + '[formats]\nbias = "s1.30"\n',
     "formats.bias: 's1.30' has more fraction bits than the accumulator (22 = weight + input fraction bits)"),
    ("update-product-too-wide", BASE + '[formats]\ndelta = "s1.40"\n[training]\nlearning_rate = 0.5\n',
     "formats.delta: 's1.40' makes the update product delta * lr * h 74 bits; the limit is 62"),
    ("feedback-no-integer-bit", BASE + '[formats]\nfeedback = "s0.7"\n',
     "formats.feedback: 's0.7' must have at least 1 integer bit to hold the feedback value 1"),
    # methods, activation
    ("methods-wrong-length", BASE + 'methods = ["dfa", "bp"]\n',
     "network.methods: ['dfa', 'bp'] must be a list of 1 methods, one per hidden layer"),
    ("method-bad-name", BASE + 'method = "sgd"\n', "network.method: 'sgd' must be one of dfa, bp"),
    ("methods-bad-name", '[network]\nlayers = [6, 5, 5, 4]\nmethods = ["dfa", "fa"]\n',
     "network.methods[1]: 'fa' must be one of dfa, bp"),
    ("method-and-methods", BASE + 'method = "dfa"\nmethods = ["dfa"]\n',
     "network.method: 'dfa' conflicts with network.methods; give one of them"),
    ("bad-activation", BASE + 'activation = "tanh"\n', "network.activation: 'tanh' must be one of relu, hardtanh"),
    ("forward-stochastic", BASE + '[rounding]\nforward = "stochastic"\n',
     "rounding.forward: 'stochastic' must be one of trunc, nearest"),
    ("update-bad-mode", BASE + '[rounding]\nupdate = "even"\n',
     "rounding.update: 'even' must be one of trunc, nearest, stochastic"),
    # learning rate
    ("lr-and-shift", BASE + "[training]\nlr_shift = 3\nlearning_rate = 0.1\n",
     "training.learning_rate: 0.1 conflicts with training.lr_shift; give one of them"),
    ("lr-above-one", BASE + "[training]\nlearning_rate = 1.5\n",
     "training.learning_rate: 1.5 must be a number with 0 < learning_rate < 1"),
    ("lr-zero", BASE + "[training]\nlearning_rate = 0\n",
     "training.learning_rate: 0 must be a number with 0 < learning_rate < 1"),
    ("lr-string", BASE + '[training]\nlearning_rate = "0.1"\n',
     "training.learning_rate: '0.1' must be a number with 0 < learning_rate < 1"),
    ("lr-not-representable", BASE + "[training]\nlearning_rate = 1e-6\n",
     "training.learning_rate: 1e-06 is not representable in formats.learning_rate u0.16"),
    # feedback
    ("dense-pm1", BASE + '[feedback]\nkind = "dense"\n',
     "feedback.values: 'pm1' must be \"fixed\" for dense feedback (pm1 and pow2 are sparse value sets)"),
    ("dense-pow2", BASE + '[feedback]\nkind = "dense"\nvalues = "pow2"\n',
     "feedback.values: 'pow2' must be \"fixed\" for dense feedback (pm1 and pow2 are sparse value sets)"),
    ("max-shift-beyond-frac", BASE + '[feedback]\nvalues = "pow2"\nmax_shift = 7\n',
     "feedback.max_shift: 7 exceeds the feedback format's 6 fraction bits (s1.6)"),
    ("bad-feedback-kind", BASE + '[feedback]\nkind = "banded"\n', "feedback.kind: 'banded' must be one of dense, sparse"),
    ("bad-storage", BASE + '[feedback]\nstorage = "rom"\n', "feedback.storage: 'rom' must be one of table, lfsr"),
    # softmax, hardware
    ("table-size-not-pow2", BASE + "[softmax]\ntable_size = 100\n", "softmax.table_size: 100 must be a power of two"),
    ("table-frac-above-activation", BASE + '[formats]\nactivation = "s5.3"\n',
     "softmax.table_frac_bits: 4 exceeds the activation format's 3 fraction bits"),
    ("bad-memory", BASE + '[hardware]\nmemory = "ddr"\n', "hardware.memory: 'ddr' must be one of auto, spram"),
]


@pytest.mark.parametrize("text, message", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_configuration(tmp_path, text, message):
    with pytest.raises(ConfigError) as exc:
        _load_text(tmp_path, text)
    assert str(exc.value) == message
    assert "\n" not in str(exc.value)
    assert message.startswith(exc.value.field + ": ")


def test_at_least_25_invalid_cases():
    assert len(INVALID) >= 25
    assert len({c[0] for c in INVALID}) == len(INVALID)


def _toml_error(text):
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return str(exc)
    raise AssertionError("expected a TOML error")


@pytest.mark.parametrize("text", [
    "[network\nlayers = [6, 5, 4]\n",                   # malformed header
    "[network]\nlayers = [6, 5, 4\n",                   # unterminated array
    "[network]\nlayers = 6 5\n",                        # junk after a value
    "[network]\nactivation = relu\n",                   # bare word value
    COMPLETE[: COMPLETE.index('methods = ["bp"') + 14],  # file truncated inside a string
    COMPLETE[: COMPLETE.index("accumulator = 40") + 12],  # file truncated after a key
    "[network]\nlayers = [6, 5, 4]\n[network]\n",       # duplicate table
])
def test_malformed_toml(tmp_path, text):
    with pytest.raises(ConfigError) as exc:
        _load_text(tmp_path, text, "broken.toml")
    assert str(exc.value) == f"(broken.toml): 'TOML' does not parse: {_toml_error(text)}"
    assert "\n" not in str(exc.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == f"(file): {str(path)!r} does not exist or is not a file"


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path)
    assert str(exc.value) == f"(file): {str(tmp_path)!r} does not exist or is not a file"


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[network]\nactivation = "r\xe9lu"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == f"(file): {str(path)!r} is not UTF-8 text"


def test_non_table_data():
    with pytest.raises(ConfigError) as exc:
        config_from_dict([1, 2])
    assert str(exc.value) == "(file): 'list' must be a table"


def test_error_fields():
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"feedback": {"k": 0}})
    err = exc.value
    assert (err.field, err.value, err.rule) == ("feedback.k", 0, "is out of range; must be 1 <= k <= 10")
    assert isinstance(err, ValueError)


def test_schedule_choice():
    from dfa_engine.config import config_from_dict

    assert config_from_dict({}).schedule == "one_pass"
    assert config_from_dict({"hardware": {"schedule": "two_pass"}}).schedule == "two_pass"
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"hardware": {"schedule": "fused"}})
    assert str(exc.value) == "hardware.schedule: 'fused' must be one of two_pass, one_pass"


def test_projection_choice():
    from dfa_engine.config import config_from_dict

    assert config_from_dict({}).projection == "parallel"
    assert config_from_dict({"hardware": {"projection": "serial"}}).projection == "serial"
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"hardware": {"projection": "fast"}})
    assert str(exc.value) == "hardware.projection: 'fast' must be one of parallel, serial"
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"feedback": {"kind": "dense", "values": "fixed"}, "hardware": {"projection": "serial"}})
    assert exc.value.field == "hardware.projection" and "sparse feedback only" in str(exc.value)
