"""The checks of a run's settings that come before any file is read: options and device."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..devices import resolve_device
from ..estimators.options import check_options, method_options
from ..io import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["checked_options", "checked_device"]


def checked_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave for ``method``, checked against its table and converted to its types.

    Only the given options are returned, so the estimator's defaults rule the rest.

    Raises
    ------
    ValueError
        If ``method`` is not registered (listing the valid names).
    InputError
        For an option ``method`` does not have, naming its flag and the method's options, or a value
        out of range.
    """
    table = method_options(method)
    unknown = sorted(set(options) - set(table))
    if unknown:
        valid = ", ".join(table[name].flag if table[name].cli else name for name in sorted(table))
        raise InputError(
            f"option(s) {', '.join(_flag(name) for name in unknown)} do not apply to method {method}; its "
            f"options are {valid}."
        )
    try:
        checked = check_options(method, options)
    except ValueError as err:
        raise InputError(str(err)) from None
    return {name: checked[name] for name in options}


def _flag(name: str) -> str:
    """How :attr:`Option.flag` would spell a name no option of the method has (``--n-epochs``)."""
    return "--" + name.replace("_", "-")


def checked_device(device: str | None) -> "torch.device":
    """:func:`varmap.devices.resolve_device`, its errors as :class:`~varmap.io.InputError`."""
    try:
        return resolve_device(device)
    except ValueError as err:
        raise InputError(str(err)) from None
