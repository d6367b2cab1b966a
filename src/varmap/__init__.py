"""varmap: self-supervised variational parameter mapping for quantitative MRI."""

__version__ = "0.1.0"

from .estimators import ESTIMATORS, fit, get_estimator
from .protocol import Protocol, ProtocolError
from .results import FitResult
from .signal_models import SIGNAL_MODELS, get_signal_model
from .image_fit import ImageFitResult, apply_checkpoint, fit_image
from .io import InputError, load_dwi

__all__ = [
    "__version__",
    "Protocol",
    "ProtocolError",
    "FitResult",
    "fit",
    "get_estimator",
    "get_signal_model",
    "ESTIMATORS",
    "SIGNAL_MODELS",
    "fit_image",
    "apply_checkpoint",
    "ImageFitResult",
    "load_dwi",
    "InputError",
]
