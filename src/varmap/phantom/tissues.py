"""The phantom's tissues: their S0, the values of every model parameter in them, and their parameter maps."""

from __future__ import annotations

import numpy as np

__all__ = [
    "MSDKI_TURNING_MARGIN",
    "PARAMETER_LIMITS",
    "TISSUES",
    "TISSUE_NAMES",
    "TISSUE_PARAMETERS",
    "TISSUE_S0",
    "tissue_parameter_maps",
]

#: Tissue order of every per-tissue axis (fractions, labels): white matter, grey matter, CSF.
TISSUES = ("WM", "GM", "CSF")
#: Long names of :data:`TISSUES`.
TISSUE_NAMES = ("white matter", "grey matter", "cerebrospinal fluid")

#: Non-diffusion-weighted signal of each pure tissue, raw units.  CSF is brightest on b=0 images
#: (long T2), grey matter brighter than white matter, as on T2-weighted b=0 images of real data.
TISSUE_S0: dict[str, float] = {"WM": 1000.0, "GM": 1200.0, "CSF": 2000.0}

#: (mean, standard deviation) of every parameter in every tissue, per signal model.  Inside a tissue a
#: parameter is ``mean + std * z(x)`` with ``z`` a smooth random field of unit variance, then limited
#: to :data:`PARAMETER_LIMITS` (and, for MS-DKI, to D·K·b_max <= 0.95 · 3).
TISSUE_PARAMETERS: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "msdki": {
        "WM": {"D": (0.80, 0.06), "K": (1.10, 0.08)},
        "GM": {"D": (1.00, 0.06), "K": (0.80, 0.06)},
        "CSF": {"D": (3.00, 0.05), "K": (0.00, 0.00)},
    },
    "ball_stick": {
        "WM": {"f": (0.60, 0.08), "d_par": (1.70, 0.12), "d_iso": (0.80, 0.08)},
        "GM": {"f": (0.25, 0.05), "d_par": (1.50, 0.12), "d_iso": (1.00, 0.08)},
        "CSF": {"f": (0.02, 0.01), "d_par": (3.00, 0.05), "d_iso": (3.00, 0.05)},
    },
}

#: Physical range every tissue value is clipped to (strictly inside the models' parameter bounds);
#: diffusivities in µm²/ms.
PARAMETER_LIMITS: dict[str, tuple[float, float]] = {
    "D": (0.1, 3.5),
    "K": (0.0, 2.5),
    "f": (0.005, 0.995),
    "d_par": (0.1, 3.5),
    "d_iso": (0.1, 3.5),
}
#: MS-DKI values are kept at D·K·b_max <= this fraction of 3 (the turning point of the expansion).
MSDKI_TURNING_MARGIN = 0.95


def tissue_parameter_maps(
    model: str,
    fields: dict[tuple[str, str], np.ndarray],
    *,
    b_max: float,
    mask: np.ndarray,
) -> dict[str, dict[str, np.ndarray]]:
    """Pure-tissue parameter maps from unit-variance random fields.

    Parameters
    ----------
    model : str
        Signal model, a key of :data:`TISSUE_PARAMETERS`.
    fields : dict of ndarray, shape (X, Y, Z) each
        ``fields[tissue, name]``: the smooth random field of zero mean and unit variance of every
        tissue of :data:`TISSUES` and every parameter of the model.
    b_max : float
        Largest b-value of the protocol, ms/µm² (the MS-DKI turning-point limit depends on it).
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask; the maps are 0 outside it.

    Returns
    -------
    dict of dict of ndarray
        ``maps[tissue][name]``, float32, shape (X, Y, Z): ``mean + std * field`` clipped to
        :data:`PARAMETER_LIMITS`; for MS-DKI, K is also limited to
        ``MSDKI_TURNING_MARGIN * 3 / (b_max * D)``.
    """
    maps: dict[str, dict[str, np.ndarray]] = {}
    for tissue in TISSUES:
        maps[tissue] = {}
        for name, (mean, std) in TISSUE_PARAMETERS[model][tissue].items():
            low, high = PARAMETER_LIMITS[name]
            maps[tissue][name] = np.clip(mean + std * fields[tissue, name], low, high).astype(np.float32)
        if model == "msdki":
            # keep every shell before the turning point b = 3 / (D K) of the kurtosis expansion
            cap = MSDKI_TURNING_MARGIN * 3.0 / (b_max * maps[tissue]["D"])
            np.minimum(maps[tissue]["K"], cap, out=maps[tissue]["K"])
        for values in maps[tissue].values():
            values[~mask] = 0.0
    return maps
