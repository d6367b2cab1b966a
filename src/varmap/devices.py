"""Where tensors live: the one place that turns a user's device choice into a ``torch.device``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only when a device is resolved
    import torch

__all__ = ["DEVICES", "resolve_device"]

#: Device names accepted besides ``cuda:N``.
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: "str | torch.device | None") -> "torch.device":
    """The ``torch.device`` for a user's choice.

    Parameters
    ----------
    device : str, torch.device or None
        ``None`` or ``"auto"``: the first CUDA GPU when torch finds one, else the CPU; ``"cpu"``,
        ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        For an unknown name, or CUDA asked for on a machine where torch finds no GPU.
    """
    import torch

    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = "auto" if device is None else str(device)
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ValueError(f"device {device!r} is not known; use one of {list(DEVICES)} or cuda:N.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but torch finds no CUDA GPU; use device cpu or auto.")
    return torch.device(name)
