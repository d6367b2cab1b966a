"""A cohort of phantom subjects as a BIDS dataset, with their ground truth as BIDS derivatives.

Every subject is a :func:`~varmap.phantom.make_phantom` of its own: its own seed (parameter fields,
S0 field, fibre field, noise), its own field of view (the box shifted by up to
:data:`MAX_SHIFT_VOXELS` voxels per axis, so its anatomy sits differently in the grid) and its own noise
level (the SNR scaled by a factor between 1/:data:`SNR_SPREAD` and :data:`SNR_SPREAD`).  The subjects'
draws come from the named random stream ``"phantom-cohort/sub-<label>"`` of the cohort's seed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from .. import __version__
from ..random_streams import numpy_stream
from .data import Phantom
from .export import phantom_images
from .geometry import load_tissue_templates, resolve_crop
from .synthesis import make_phantom

__all__ = ["write_phantom_cohort", "subject_settings", "MAX_SHIFT_VOXELS", "SNR_SPREAD", "TRUTH_FOLDER"]

#: Largest shift of a subject's field of view, voxels per axis.
MAX_SHIFT_VOXELS = 2
#: A subject's SNR is the cohort's times a log-uniform factor in [1/SNR_SPREAD, SNR_SPREAD].
SNR_SPREAD = 1.25
#: Where the ground truth goes, relative to the dataset root.
TRUTH_FOLDER = Path("derivatives") / "truth"

_BIDS_VERSION = "1.10.0"


def subject_settings(
    label: str, *, seed: int, snr: float, crop: Sequence[int] | None, voxel_size: float
) -> dict:
    """The draws that make one subject differ from the others.

    Parameters
    ----------
    label : str
        Subject label (``"01"``).
    seed : int
        The cohort's seed.
    snr : float
        The cohort's b=0 SNR of white matter.
    crop : (nx, ny, nz), optional
        Box around the brain centre; ``None``: the whole grid but a margin of
        :data:`MAX_SHIFT_VOXELS` voxels on each side.
    voxel_size : float
        mm.

    Returns
    -------
    dict
        ``seed`` (of the subject's phantom), ``snr``, ``shift`` (voxels per axis) and ``crop``
        (three slices of the template grid).
    """
    rng = numpy_stream(seed, f"phantom-cohort/sub-{label}")
    subject_seed = int(rng.integers(0, 2**31 - 1))
    subject_snr = float(snr) * math.exp(rng.uniform(-1.0, 1.0) * math.log(SNR_SPREAD))
    shift = rng.integers(-MAX_SHIFT_VOXELS, MAX_SHIFT_VOXELS + 1, size=3)
    _, _, brain, _ = load_tissue_templates(voxel_size)
    shape = brain.shape
    if crop is None:
        box = tuple(slice(MAX_SHIFT_VOXELS, n - MAX_SHIFT_VOXELS) for n in shape)
    else:
        box = resolve_crop(tuple(int(c) for c in crop), shape, brain)
    region = []
    for part, offset, n in zip(box, shift, shape):
        size = part.stop - part.start
        start = int(np.clip(part.start + offset, 0, n - size))
        region.append(slice(start, start + size))
    return {"seed": subject_seed, "snr": subject_snr, "shift": [int(s) for s in shift], "crop": tuple(region)}


def write_phantom_cohort(
    output_dir: str | PathLike,
    *,
    n_subjects: int,
    model: str = "msdki",
    voxel_size: float = 2.0,
    snr: float = 10.0,
    seed: int = 0,
    crop: Sequence[int] | None = None,
    noise_field: bool = False,
    force: bool = False,
) -> list[Path]:
    """Write ``n_subjects`` phantom subjects as a BIDS dataset, ground truth under ``derivatives/truth``.

    Parameters
    ----------
    output_dir : path
        Dataset root; written atomically (:func:`varmap.io.atomic_output_dir`).
    n_subjects : int
        Subjects ``sub-01``, ``sub-02``, ...
    model : {"msdki", "ball_stick"}
    voxel_size : float
        mm.
    snr : float
        b=0 SNR of white matter of the cohort; each subject's differs (:func:`subject_settings`).
    seed : int
    crop : (nx, ny, nz), optional
        Box around the brain centre, voxels (small cohorts for tests and quick runs).
    noise_field : bool
        Noise level varying smoothly 1-3x over each subject's head, like a coil profile
        (:func:`~varmap.phantom.make_phantom`).
    force : bool
        Replace an existing ``output_dir``.

    Returns
    -------
    list of Path
        Every file written, under ``output_dir``: ``dataset_description.json``; per subject
        ``sub-<label>/dwi/sub-<label>_dwi.nii.gz`` (float32), ``.bval``, ``.bvec`` and
        ``sub-<label>_desc-brain_mask.nii.gz``; under ``derivatives/truth/``, its
        ``dataset_description.json`` and per subject ``sub-<label>/dwi/``: the true parameter maps
        under their BIDS-Derivatives names (``sub-01_model-msdki_param-md_dwimap.nii.gz``, ...,
        ``param-s0``; :mod:`varmap.cohort.naming`), the volume-fraction-weighted means of the tissue
        parameters (``..._param-md_desc-mixture_dwimap.nii.gz``, ...), the tissue fractions
        ``sub-<label>_label-WM_probseg.nii.gz`` (``GM``, ``CSF``), the dominant tissue
        ``sub-<label>_dseg.nii.gz`` (0 background, 1 WM, 2 GM, 3 CSF) and ``sub-<label>_phantom.json``
        (the phantom's settings and the subject's draws).

    Raises
    ------
    ValueError
        If ``n_subjects`` < 1, or on the arguments :func:`make_phantom` refuses.
    FileExistsError
        If ``output_dir`` exists and ``force`` is false.
    """
    from .. import io

    if int(n_subjects) < 1:
        raise ValueError(f"n_subjects={n_subjects!r}: a cohort needs at least 1 subject.")
    io.check_output_dir(output_dir, force=force)
    output_dir = Path(output_dir)
    labels = [f"{i + 1:02d}" for i in range(int(n_subjects))]
    written: list[Path] = []
    with io.atomic_output_dir(output_dir, force=force) as staging:
        written.append(io.save_json(_description("varmap phantom cohort", "raw"), staging / "dataset_description.json"))
        truth_root = staging / TRUTH_FOLDER
        truth_root.mkdir(parents=True)
        written.append(io.save_json(_description("varmap phantom ground truth", "derivative"),
                                    truth_root / "dataset_description.json"))
        for label in labels:
            settings = subject_settings(label, seed=seed, snr=snr, crop=crop, voxel_size=voxel_size)
            phantom = make_phantom(model=model, voxel_size=voxel_size, snr=settings["snr"], seed=settings["seed"],
                                   crop=settings["crop"], noise_field=noise_field)
            written += _write_subject(phantom, label, staging, settings)
    return [output_dir / path.relative_to(staging) for path in written]


def _description(name: str, kind: str) -> dict:
    return {
        "Name": name,
        "BIDSVersion": _BIDS_VERSION,
        "DatasetType": kind,
        "GeneratedBy": [{"Name": "varmap", "Version": __version__, "Description": "varmap phantom --bids"}],
    }


def _write_subject(phantom: Phantom, label: str, root: Path, settings: dict) -> list[Path]:
    """One subject's DWI, tables and mask under ``root/sub-<label>/dwi``, its truth under the truth folder."""
    from .. import io
    from ..cohort.naming import BidsPrefix, output_name

    stem = f"sub-{label}"
    images = phantom_images(phantom)
    dwi_dir = root / stem / "dwi"
    mask_name = f"{stem}_desc-brain_mask.nii.gz"
    files = io.write_phantom_dataset(dwi_dir, dwi=phantom.dwi, protocol=phantom.protocol, affine=phantom.affine,
                                     images={mask_name: images.pop("mask.nii.gz")}, texts={})
    written = []
    for path in files:  # write_phantom_dataset names the series dwi.*; BIDS names it sub-<label>_dwi.*
        target = path if path.name == mask_name else path.with_name(f"{stem}_{path.name}")
        os.replace(path, target)
        written.append(target)
    truth_dir = root / TRUTH_FOLDER / stem / "dwi"
    truth_dir.mkdir(parents=True)
    prefix = BidsPrefix(subject=label)
    names = {f"truth/{name}.nii.gz": output_name(name, phantom.model, prefix) for name in phantom.truth}
    names.update({f"truth/mixture_{name}.nii.gz": output_name(name, phantom.model, prefix).replace(
        "_dwimap", "_desc-mixture_dwimap") for name in phantom.mixture_truth})
    names.update({f"truth/fraction_{tissue.lower()}.nii.gz": f"{stem}_label-{tissue}_probseg.nii.gz"
                  for tissue in ("WM", "GM", "CSF")})
    names["truth/labels.nii.gz"] = f"{stem}_dseg.nii.gz"
    for key, array in images.items():
        written.append(io.save_mni_image(array, truth_dir / names[key], phantom.affine))
    record = {**phantom.config, "subject": label, "subject_settings": {
        **settings, "crop": [[s.start, s.stop] for s in settings["crop"]]}}
    written.append(io.save_json(record, truth_dir / f"{stem}_phantom.json"))
    return written
