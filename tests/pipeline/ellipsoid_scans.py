"""A small simulated scan written as NIfTI + FSL files, with known MS-DKI maps, for the pipeline tests.

Imported by the tests of this folder (``from ellipsoid_scans import ...``) and by its conftest.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from varmap import Protocol, get_signal_model
from varmap.simulation import add_noise, hcp_protocol

SHAPE = (14, 14, 8)
AFFINE = np.array([[-2.0, 0.0, 0.0, 30.0], [0.0, 2.0, 0.0, -20.0], [0.0, 0.0, 2.5, -10.0], [0, 0, 0, 1]])
#: Noise standard deviation of the simulated scans (SNR 40 at S0 = 1000); the lowest one of a scan
#: whose noise varies.
SIGMA = 25.0


def ellipsoid(
    n_b0: int = 4, shells: tuple[float, ...] = (1000.0, 2000.0), protocol: Protocol | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray], Protocol]:
    """Known MS-DKI maps in an ellipsoid (zero background), and a protocol of ``n_b0`` b=0 (none: 0) then
    16 directions on each of ``shells`` (s/mm²), unless ``protocol`` is given."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    inside = x**2 + y**2 + z**2 < 0.85
    truth = {
        "D": 0.6 + 0.25 * (x + 1),  # µm²/ms, a smooth gradient
        "K": np.where(y > 0, 0.9, 0.4),  # two "tissues"
        "S0": 1000.0 + 200.0 * z,
    }
    return inside, truth, protocol or hcp_protocol(n_b0=n_b0, n_directions=16, shells=shells)


def noise_ramp() -> np.ndarray:
    """A noise level that rises smoothly from σ = 25 to 75 along the first axis, shape SHAPE."""
    x = np.linspace(0.0, 1.0, SHAPE[0])[:, None, None]
    return np.broadcast_to(SIGMA * (1.0 + 2.0 * x), SHAPE).copy()


def write_ellipsoid_scan(
    folder: Path, *, n_b0: int = 4, shells: tuple[float, ...] = (1000.0, 2000.0), seed: int = 0,
    varying_noise: bool = False, protocol: Protocol | None = None,
) -> tuple[tuple[Path, Path, Path], np.ndarray, dict[str, np.ndarray]]:
    """Simulate the ellipsoid (:func:`ellipsoid`; ``protocol`` replaces its own) with Rician noise (σ = 25,
    or :func:`noise_ramp`) and write NIfTI + FSL files.

    Returns
    -------
    paths : tuple of Path
        (dwi, bvals, bvecs).
    inside : ndarray of bool, shape SHAPE
    truth : dict of ndarray
        ``D``, ``K``, ``S0`` and ``sigma`` (the noise standard deviation) maps.
    """
    inside, truth, protocol = ellipsoid(n_b0, shells, protocol)
    truth["sigma"] = noise_ramp() if varying_noise else np.full(SHAPE, SIGMA)
    model = get_signal_model("msdki", protocol)
    clean = model.predict({"D": truth["D"], "K": truth["K"]}, S0=truth["S0"]) * inside[..., None]
    noisy = add_noise(clean, sigma=truth["sigma"][..., None], rng=seed)
    image = nib.Nifti1Image(noisy.astype(np.float32), AFFINE)
    image.set_sform(AFFINE, 2)
    image.set_qform(AFFINE, 1)
    paths = (folder / "dwi.nii.gz", folder / "dwi.bval", folder / "dwi.bvec")
    nib.save(image, paths[0])
    np.savetxt(paths[1], protocol.bvals[None] * 1000.0, fmt="%g")  # FSL files hold s/mm²
    np.savetxt(paths[2], protocol.bvecs.T, fmt="%.8f")
    return paths, inside, truth
