"""What ``model.pt`` holds, and the fitted estimator rebuilt from it for a scan of the same protocol."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import InputError, load_checkpoint
from ..protocol import Protocol

if TYPE_CHECKING:
    import torch

    from ..estimators import Estimator
    from .noise import NoiseLevel
    from .scan import Scan

__all__ = ["checkpoint_of", "restore_estimator"]


def checkpoint_of(model: str, protocol: Protocol, estimator: "Estimator", noise: "NoiseLevel") -> dict:
    """The content of ``model.pt``: varmap version, signal model name, protocol, estimator state, and
    how the fit's noise level was found (``noise``: method and parameters; ``varmap apply`` estimates
    a new scan's noise map the same way)."""
    from .. import __version__

    return {"varmap_version": __version__, "model": model, "protocol": protocol.to_dict(),
            "state": estimator.get_state(), "noise": {"method": noise.method, "parameters": noise.parameters}}


def restore_estimator(
    path: Path, scan: "Scan", *, device: "torch.device", progress: bool
) -> tuple["Estimator", dict[str, Any]]:
    """The fitted estimator of a checkpoint, for ``scan``, on ``device``.

    Returns
    -------
    estimator : Estimator
        Ready for ``transform``.
    checkpoint : dict
        As written by :func:`checkpoint_of` (tensors on ``device``).

    Raises
    ------
    InputError
        If the file is not a varmap checkpoint, or the scan's protocol is not the checkpoint's.
    """
    from ..estimators import ESTIMATORS
    from ..signal_models import get_signal_model

    checkpoint = load_checkpoint(path, device=device)
    trained_on = Protocol.from_dict(checkpoint["protocol"])
    if scan.protocol != trained_on:
        raise InputError(
            f"the scan's protocol ({scan.protocol!r}, from {scan.files['bvals']} / {scan.files['bvecs']}) "
            f"differs from the one the checkpoint {path} was trained on ({trained_on!r}); apply a "
            f"checkpoint only to scans of the same protocol, or fit this scan with varmap fit."
        )
    signal_model = get_signal_model(checkpoint["model"], scan.protocol)
    state = checkpoint["state"]
    estimator = ESTIMATORS[state["method"]].from_state(signal_model, state, device=device)
    estimator.progress = progress
    return estimator, checkpoint
