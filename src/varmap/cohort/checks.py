"""Every scan of a cohort checked before any fitting, with the checks of ``varmap fit``, all problems at once."""

from __future__ import annotations

from ..io import load_mask, load_protocol, open_dwi
from ..protocol import Protocol
from .population import ScanFiles

__all__ = ["scan_problems", "problems_text"]

#: What a check of a scan's files can raise: a user error, reported as a problem of that scan.
_CHECK_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, PermissionError)


def scan_problems(scan: ScanFiles, *, model: str, protocol: Protocol | None = None) -> list[str]:
    """What keeps one scan from being mapped: every problem found, not only the first.

    Parameters
    ----------
    scan : ScanFiles
    model : str
        Registered signal model; the scan's protocol must suit it (MS-DKI needs two non-zero shells...).
    protocol : Protocol, optional
        The protocol every scan must have (that of a population model's checkpoint).

    Returns
    -------
    list of str
        Empty when the scan can be mapped.  The same checks and messages as ``varmap fit``
        (:func:`varmap.io.open_dwi`, :func:`~varmap.io.load_protocol` against the number of volumes,
        :func:`~varmap.io.load_mask` against the image grid, the signal model against the protocol).
    """
    from ..signal_models import get_signal_model

    problems: list[str] = []
    image = _checked(problems, open_dwi, scan.dwi)
    n_volumes = image.n_volumes if image is not None else None
    scan_protocol = _checked(problems, load_protocol, scan.bvals, scan.bvecs, n_volumes=n_volumes)
    if scan.mask is not None and image is not None:
        _checked(problems, load_mask, scan.mask, image.spatial_shape, affine=image.affine)
    if scan_protocol is not None:
        _checked(problems, get_signal_model, model, scan_protocol)
        if protocol is not None and scan_protocol != protocol:
            problems.append(
                f"the protocol of {scan.bvals} / {scan.bvecs} ({scan_protocol!r}) is not the population model's "
                f"({protocol!r}); a population model maps only scans of its own protocol"
            )
    return problems


def _checked(problems: list[str], check, *args, **kwargs):
    """``check(*args, **kwargs)``, or ``None`` with its error message appended to ``problems``."""
    try:
        return check(*args, **kwargs)
    except _CHECK_ERRORS as err:
        problems.append(" ".join(str(err).split()))
        return None


def problems_text(problems: dict[str, list[str]]) -> str:
    """Problems per scan as one text block: a line per scan name, an indented line per problem."""
    lines = []
    for name, items in problems.items():
        lines.append(f"{name}:")
        lines += [f"  - {item}" for item in items]
    return "\n".join(lines)
