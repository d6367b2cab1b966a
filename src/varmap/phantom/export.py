"""What a written phantom holds: its images, in the order they are written, and its README text.

The files themselves are written by :func:`varmap.io.write_phantom_dataset` (every file the package
writes goes through :mod:`varmap.io`); :func:`write_phantom` hands it the phantom's content.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

import numpy as np

from ..signal_models import get_signal_model
from .data import Phantom
from .fields import NOISE_FIELD_RANGE, S0_FIELD_STD
from .tissues import TISSUE_PARAMETERS, TISSUE_S0, TISSUES

__all__ = ["phantom_images", "readme_text", "write_phantom"]


_README = """\
Ground truth of a varmap digital brain phantom
=============================================

Model: {model}.  Voxel size {voxel_size:g} mm, grid {shape}, {n_voxels} brain voxels.
Noise: Rician, sigma = {sigma:g} per channel (raw units) = S0 of pure white matter ({s0_wm:g}) / SNR {snr:g}.{noise_field}

Files
-----
{param_lines}
S0.nii.gz             true b=0 signal: B(x) * sum_t w_t S0_t  (S0_WM={s0_wm:g}, S0_GM={s0_gm:g}, S0_CSF={s0_csf:g};
                      B is a smooth field, 1 +- {s0_std:g})
fraction_wm.nii.gz    white-matter volume fraction w_WM
fraction_gm.nii.gz    grey-matter volume fraction w_GM
fraction_csf.nii.gz   CSF volume fraction w_CSF = 1 - w_WM - w_GM  (the three sum to 1 in the mask)
labels.nii.gz         dominant tissue: 0 background, 1 WM, 2 GM, 3 CSF
{direction_line}
Definition of the truth in mixed (partial-volume) voxels
-------------------------------------------------------
Every tissue t has its own smoothly varying parameters theta_t(x).  A voxel measures the sum of its
tissues' signals weighted by volume fraction:

    s(x) = sum_t w_t(x) * S0_t * B(x) * phi(theta_t(x))   (+ Rician noise)

A mixed signal is in general not the model's signal at any parameter value, nor at the
volume-fraction-weighted mean of the tissue parameters (two MS-DKI compartments are not one: the
apparent kurtosis of a mixture gains the spread of D between them).  The ground-truth parameter maps
are therefore what the model reports for the voxel without noise:

    pure voxels (one fraction 1):  theta(x) = theta_t(x) of that tissue;
    mixed voxels:                  theta(x) = the model fitted by least squares (every measurement,
                                   equal weights) to the noiseless signal s(x) above.

This depends on the protocol's b-values, as every estimate of the model does.  The
volume-fraction-weighted means sum_t w_t(x) * theta_t(x) are in mixture_<name>.nii.gz.
Maps are 0 outside the brain mask.

Tissue values (mean, standard deviation of the smooth spatial variation):
{tissue_lines}
The bvecs are the gradient directions in voxel axes; the images are stored radiologically (negative
determinant, like FSL's MNI152 and HCP data), so this is also FSL's bvecs convention.
Settings and seed: ../phantom.json.
"""


def write_phantom(phantom: Phantom, output_dir: str | PathLike, *, force: bool = False) -> list[Path]:
    """Write a phantom as a dataset a user could have acquired, with its ground truth.

    Parameters
    ----------
    phantom : Phantom
        From :func:`~varmap.phantom.make_phantom` (with ``image=True``).
    output_dir : path
        Folder to create.  Written into a temporary folder beside it and renamed at the end
        (:func:`varmap.io.atomic_output_dir`).
    force : bool
        Replace an existing ``output_dir``.

    Returns
    -------
    list of Path
        ``dwi.nii.gz`` (float32, X×Y×Z×N), ``dwi.bval`` (s/mm², one row), ``dwi.bvec`` (three rows),
        ``mask.nii.gz`` (uint8), under ``truth/`` one map per model parameter (``D.nii.gz``, ...;
        ``n.nii.gz`` X×Y×Z×3 for directional models), ``S0.nii.gz``, ``fraction_wm/gm/csf.nii.gz``,
        ``labels.nii.gz``, with a noise field ``sigma.nii.gz`` (every voxel's noise standard
        deviation, :attr:`Phantom.sigma_map`), and ``README.txt``, and ``phantom.json``.

    Raises
    ------
    FileExistsError
        If ``output_dir`` exists and ``force`` is false (the message says to pass ``--force``).
    ValueError
        If the phantom was built with ``image=False``.
    """
    from ..io import write_phantom_dataset  # the numerical core stays free of I/O imports

    if phantom.dwi is None:
        raise ValueError(
            "this phantom has no image (built with image=False); rebuild it with make_phantom(image=True)."
        )
    return write_phantom_dataset(
        output_dir,
        dwi=phantom.dwi,
        protocol=phantom.protocol,
        affine=phantom.affine,
        images=phantom_images(phantom),
        texts={"truth/README.txt": readme_text(phantom), "phantom.json": json.dumps(phantom.config, indent=2)},
        force=force,
    )


def phantom_images(phantom: Phantom) -> dict[str, np.ndarray]:
    """The images written beside ``dwi.nii.gz``, by relative path, in the data type they are stored in.

    Parameters
    ----------
    phantom : Phantom

    Returns
    -------
    dict of ndarray
        ``mask.nii.gz`` (uint8), ``truth/<name>.nii.gz`` for every entry of :attr:`Phantom.truth`,
        ``truth/fraction_wm.nii.gz``, ``..._gm``, ``..._csf`` (float32), ``truth/labels.nii.gz``
        (uint8: 0 background, 1 WM, 2 GM, 3 CSF) and, when the phantom has a noise field,
        ``truth/sigma.nii.gz`` (float32, every voxel's noise standard deviation).
    """
    images = {"mask.nii.gz": np.asarray(phantom.mask, dtype=np.uint8)}
    for name, value in phantom.truth.items():
        images[f"truth/{name}.nii.gz"] = np.asarray(value, dtype=np.float32)
    for name, value in phantom.mixture_truth.items():
        images[f"truth/mixture_{name}.nii.gz"] = np.asarray(value, dtype=np.float32)
    for t, tissue in enumerate(TISSUES):
        images[f"truth/fraction_{tissue.lower()}.nii.gz"] = np.asarray(phantom.fractions[..., t], dtype=np.float32)
    images["truth/labels.nii.gz"] = np.asarray(phantom.labels.astype(np.int16) + 1, dtype=np.uint8)
    if phantom.noise_field is not None:
        images["truth/sigma.nii.gz"] = phantom.sigma_map
    return images


def readme_text(phantom: Phantom) -> str:
    """The ``truth/README.txt`` of a written phantom: files, definition of the truth, tissue values.

    Parameters
    ----------
    phantom : Phantom

    Returns
    -------
    str
    """
    names = phantom.parameter_names
    model = get_signal_model(phantom.model, phantom.protocol)
    param_lines = "\n".join(
        f"{p.name + '.nii.gz':<21} {p.description} ({p.unit}), the model fitted to the noiseless signal\n"
        f"{'mixture_' + p.name + '.nii.gz':<21} volume-fraction-weighted mean of the tissues' {p.name}"
        for p in model.parameters
    )
    direction_line = ""
    if "n" in phantom.truth:
        direction_line = (
            "n.nii.gz              fibre direction (unit vector in voxel axes, X x Y x Z x 3; n and -n are\n"
            "                      one fibre); one smooth field shared by all tissues, meaningful where\n"
            "                      white matter dominates\n"
        )
    noise_field = sigma_line = ""
    if phantom.noise_field is not None:
        low, high = NOISE_FIELD_RANGE
        noise_field = (
            f"\nThe noise level varies smoothly over the head (noise field, like a coil sensitivity / g-factor\n"
            f"profile): each voxel's sigma is the value above times a factor from {low:g} to {high:g} over the brain.\n"
            f"sigma above is therefore that of the least noisy brain voxels."
        )
        sigma_line = "sigma.nii.gz          noise standard deviation of every voxel (raw units, per channel)\n"
    values = TISSUE_PARAMETERS[phantom.model]
    tissue_lines = "\n".join(
        f"    {tissue:<4} " + ", ".join(f"{name} {mean:g} +- {std:g}" for name, (mean, std) in values[tissue].items())
        for tissue in TISSUES
    )
    if phantom.model == "msdki":
        tissue_lines += "\n    (K is also limited to K <= 0.95 * 3 / (D * b_max): every shell before the turning point)"
    return _README.format(
        model=phantom.model,
        voxel_size=phantom.voxel_size,
        shape="x".join(str(n) for n in phantom.shape),
        n_voxels=phantom.n_voxels,
        sigma=phantom.sigma,
        snr=phantom.snr,
        s0_wm=TISSUE_S0["WM"],
        s0_gm=TISSUE_S0["GM"],
        s0_csf=TISSUE_S0["CSF"],
        s0_std=S0_FIELD_STD,
        param_lines=param_lines,
        direction_line=direction_line + sigma_line,
        tissue_lines=tissue_lines,
        noise_field=noise_field,
    ) + f"\nNames of the parameters in this model: {', '.join(names)}.\n"
