"""varmap: self-supervised variational parameter mapping for quantitative MRI.

``import varmap`` loads no heavy library (torch, nibabel, dipy, matplotlib): every public name is
imported from its module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public names and the module each is imported from, on first use.
_PUBLIC: dict[str, str] = {
    "Protocol": "protocol",
    "ProtocolError": "protocol",
    "FitResult": "results",
    "fit": "estimators",
    "get_estimator": "estimators",
    "ESTIMATORS": "estimators",
    "get_signal_model": "signal_models",
    "SIGNAL_MODELS": "signal_models",
    "fit_image": "pipeline",
    "apply_checkpoint": "pipeline",
    "ImageFitResult": "pipeline",
    "load_dwi": "io",
    "InputError": "io",
}

#: Subpackages and modules reachable as attributes (``varmap.io``) after a bare ``import varmap``.
_SUBMODULES = frozenset({
    "cli", "devices", "estimators", "evaluation", "io", "phantom", "pipeline", "plots", "protocol", "provenance",
    "results", "signal_models", "simulation", "cohort", "random_streams",
})

__all__ = ["__version__", *_PUBLIC]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time module __getattr__ imports on demand
    from .estimators import ESTIMATORS, fit, get_estimator
    from .io import InputError, load_dwi
    from .pipeline import ImageFitResult, apply_checkpoint, fit_image
    from .protocol import Protocol, ProtocolError
    from .results import FitResult
    from .signal_models import SIGNAL_MODELS, get_signal_model


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC, *_SUBMODULES})
