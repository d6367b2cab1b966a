"""Physics forward models and their registry."""

from __future__ import annotations

from ..protocol import Protocol
from .ball_stick import BallStickModel, ball_stick_signal
from .base import Parameter, SignalModel
from .msdki import MSDKIModel, msdki_signal

__all__ = [
    "SIGNAL_MODELS",
    "get_signal_model",
    "Parameter",
    "SignalModel",
    "MSDKIModel",
    "BallStickModel",
    "msdki_signal",
    "ball_stick_signal",
]

#: Registered models by name.
SIGNAL_MODELS: dict[str, type[SignalModel]] = {
    MSDKIModel.name: MSDKIModel,
    BallStickModel.name: BallStickModel,
}


def get_signal_model(name: str, protocol: Protocol) -> SignalModel:
    """Build the registered model ``name`` for ``protocol``.

    Raises
    ------
    ValueError
        If ``name`` is not registered; the message lists the valid names.
    """
    try:
        model_class = SIGNAL_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown signal model {name!r}; choose one of {sorted(SIGNAL_MODELS)}.") from None
    return model_class(protocol)
