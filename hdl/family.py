"""One interface over the generated engines (MLP, CNN and RNN), for the code that serves both:
the simulators' harnesses, the golden-model feed and the scoreboards.

Both engines have the same four streams; they differ in their host map, their counters and
their parameter shapes, which :func:`engine_family` supplies for a configuration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

__all__ = ["EngineFamily", "engine_family", "check_engine_config_type"]


@dataclass(frozen=True)
class EngineFamily:
    name: str
    engine: Callable            # (cfg, params=None, init_parameters=True) -> wiring.Component
    signature: Callable         # cfg -> wiring.Signature
    host_address: Callable      # (cfg, kind, layer=0, row=0, column=0, counter=None) -> int
    counters: tuple
    matrix_shapes: Callable     # cfg -> [(n_out, n_in)] per layer: W as the host map addresses it
    initial_parameters: Callable
    n_inputs: Callable          # cfg -> sample transfers per sample
    schedule: Callable | None = None   # cfg -> (forward, backward) PassPlans (loop-nest engines)


def _mlp():
    from dfa_engine.feedback import initial_parameters

    from .engine import COUNTERS, Engine, engine_signature, host_address

    return EngineFamily("mlp", Engine, engine_signature, host_address, COUNTERS,
                        lambda cfg: [(cfg.layers[l + 1], cfg.layers[l]) for l in range(cfg.n_layers)],
                        initial_parameters, lambda cfg: cfg.layers[0])


def _cnn():
    from dfa_engine.sim.golden_cnn import initial_cnn_parameters

    from .cnn_engine import CNN_COUNTERS, CNNEngine, cnn_engine_signature, cnn_host_address, network_layers, schedule

    return EngineFamily("cnn", CNNEngine, cnn_engine_signature, cnn_host_address, CNN_COUNTERS,
                        lambda cfg: [(Ly.h_shape[0], Ly.fan_in) for Ly in network_layers(cfg)],
                        initial_cnn_parameters, lambda cfg: math.prod(cfg.input_shape), schedule)


def _rnn():
    from dfa_engine.sim.golden_rnn import initial_rnn_parameters

    from .rnn_engine import (RNN_COUNTERS, RNNEngine, rnn_engine_signature, rnn_host_address, rnn_host_parameters,
                             rnn_matrix_shapes, rnn_schedule)

    return EngineFamily("rnn", RNNEngine, rnn_engine_signature, rnn_host_address, RNN_COUNTERS,
                        rnn_matrix_shapes, lambda cfg: rnn_host_parameters(initial_rnn_parameters(cfg)),
                        lambda cfg: cfg.steps * cfg.inputs, rnn_schedule)


def engine_family(cfg) -> EngineFamily:
    """The family of ``cfg``: a :class:`~dfa_engine.cnn_config.CNNEngineConfig` is a CNN, a
    :class:`~dfa_engine.rnn_config.RNNEngineConfig` an RNN, anything else an MLP."""
    from dfa_engine.cnn_config import CNNEngineConfig
    from dfa_engine.rnn_config import RNNEngineConfig

    if isinstance(cfg, CNNEngineConfig):
        return _cnn()
    if isinstance(cfg, RNNEngineConfig):
        return _rnn()
    return _mlp()


def check_engine_config_type(cfg):
    """Raise ``TypeError`` unless ``cfg`` is a configuration of a generated engine."""
    from dfa_engine.cnn_config import CNNEngineConfig
    from dfa_engine.config import EngineConfig
    from dfa_engine.rnn_config import RNNEngineConfig

    if not isinstance(cfg, (EngineConfig, CNNEngineConfig, RNNEngineConfig)):
        raise TypeError(f"Configuration must be an EngineConfig, a CNNEngineConfig or an RNNEngineConfig, not {cfg!r}")
