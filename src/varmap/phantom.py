"""A digital brain phantom with known ground truth, built from the MNI152 tissue probability maps.

The geometry comes from the grey-matter, white-matter and brain-mask templates that nilearn ships
inside its package (no download).  Every tissue gets its own smoothly varying parameter maps, every
voxel mixes the signals of the tissues it contains, and Rician noise makes the result look like an
acquisition: :func:`make_phantom` builds it in memory, :func:`write_phantom` writes it as NIfTI +
FSL bvals/bvecs with the ground truth beside it.

Nothing here plots; :func:`write_phantom` is the only function that touches files.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from os import PathLike
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import __version__
from .protocol import Protocol
from .signal_models import SIGNAL_MODELS, get_signal_model
from .simulation import add_noise, hcp_protocol

__all__ = [
    "TISSUES",
    "TISSUE_NAMES",
    "TISSUE_S0",
    "TISSUE_PARAMETERS",
    "PARTIAL_VOLUME",
    "Phantom",
    "make_phantom",
    "write_phantom",
    "load_tissue_templates",
    "smooth_random_field",
    "tissue_groups",
    "boundary_distance",
]

logger = logging.getLogger("varmap")

#: Tissue order of every per-tissue axis (fractions, labels): white matter, grey matter, CSF.
TISSUES = ("WM", "GM", "CSF")
#: Long names of :data:`TISSUES`.
TISSUE_NAMES = ("white matter", "grey matter", "cerebrospinal fluid")
#: Name of the group of voxels where no tissue reaches the purity threshold (:func:`tissue_groups`).
PARTIAL_VOLUME = "PV"

#: Non-diffusion-weighted signal of each pure tissue, raw units.  CSF is brightest on b=0 images
#: (long T2), grey matter brighter than white matter, as on T2-weighted b=0 images of real data.
TISSUE_S0: dict[str, float] = {"WM": 1000.0, "GM": 1200.0, "CSF": 2000.0}

#: (mean, standard deviation) of every parameter in every tissue, per signal model.  Inside a tissue a
#: parameter is ``mean + std * z(x)`` with ``z`` a smooth random field of unit variance, then limited
#: to :data:`_LIMITS` (and, for MS-DKI, to D·K·b_max <= 0.95 · 3).
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

# Physical range every tissue value is clipped to (strictly inside the models' parameter bounds).
_LIMITS: dict[str, tuple[float, float]] = {
    "D": (0.1, 3.5),
    "K": (0.0, 2.5),
    "f": (0.005, 0.995),
    "d_par": (0.1, 3.5),
    "d_iso": (0.1, 3.5),
}
# MS-DKI values are kept at D·K·b_max <= this fraction of 3 (the turning point of the expansion).
_MSDKI_TURNING_MARGIN = 0.95
# Relative standard deviation of the smooth multiplicative S0 field (receive-coil inhomogeneity).
_S0_FIELD_STD = 0.05
# FWHM (mm) of the smooth field that orients the fibres.
_ORIENTATION_FWHM_MM = 20.0
# Voxels simulated at once: bounds memory to a few hundred MB at 288 measurements.  Part of the noise
# stream's definition (changing it changes the noise of a seed), hence a constant.
_CHUNK = 32_768
# Resolution (mm) of the templates the phantom is resampled from.
_TEMPLATE_RESOLUTION = 1


# ---------------------------------------------------------------------------------------- data
@dataclass
class Phantom:
    """A simulated diffusion acquisition of a brain with its ground truth.

    Attributes
    ----------
    dwi : ndarray, shape (X, Y, Z, n_measurements), float32, or None
        Noisy magnitude images, raw units; background voxels hold Rician noise of a zero signal.
        ``None`` when built with ``image=False`` (then :attr:`signals` still gives the brain voxels).
    affine : ndarray, shape (4, 4)
        Voxel-to-world (MNI152, mm) transform, x axis stored radiologically (negative determinant).
    protocol : Protocol
        The acquisition.
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask (resampled MNI152 brain mask >= 0.5).
    fractions : ndarray, shape (X, Y, Z, 3), float32
        Volume fractions of :data:`TISSUES` (WM, GM, CSF); they sum to 1 in the mask and are 0 outside.
    truth : dict of ndarray
        Ground truth of the voxel: every scalar parameter of the model, shape (X, Y, Z), as the
        fraction-weighted mean of the tissue values (see Notes); ``"S0"``, the true b=0 signal; and for
        directional models ``"n"``, shape (X, Y, Z, 3), the unit fibre direction in voxel axes.  Zero
        outside the mask.
    tissue_params : dict of dict of ndarray
        ``tissue_params[tissue][name]``: the pure-tissue parameter map of each tissue, shape (X, Y, Z),
        defined everywhere in the mask (whatever the tissue's fraction).
    sigma : float
        Noise standard deviation of each (real and imaginary) channel, raw units.
    labels : ndarray of int8, shape (X, Y, Z)
        Dominant tissue (index into :data:`TISSUES`), -1 outside the mask.
    model : str
        Registered signal model the truth belongs to.
    snr : float
        b=0 SNR of pure white matter: ``TISSUE_S0["WM"] / sigma``.
    seed : int
    voxel_size : float
        Isotropic voxel size, mm.
    crop : tuple of slice or None
        Region of the resampled template grid this phantom covers (``None``: all of it).
    config : dict
        Every setting and tissue value used, JSON-serialisable (written as ``phantom.json``).
    masked_signals : ndarray, shape (n_voxels, n_measurements), float32, or None
        Brain voxels' signals when :attr:`dwi` is ``None``; use :attr:`signals`.

    Notes
    -----
    A voxel with tissue fractions :math:`w_t` (WM, GM, CSF) measures

    .. math:: s = \\sum_t w_t\\, S_{0,t}\\, B(x)\\, \\phi(\\theta_t(x)) + \\text{Rician noise}

    with :math:`S_{0,t}` from :data:`TISSUE_S0` and :math:`B` a smooth multiplicative S0 field.  Its
    ground truth is the *volume-fraction*-weighted mean :math:`\\theta = \\sum_t w_t \\theta_t`, and its
    true S0 is :math:`B \\sum_t w_t S_{0,t}`.  A mixed voxel's signal is in general not the model's
    signal at that mean (two MS-DKI compartments are not one MS-DKI compartment), so errors in
    partial-volume voxels are partly model error; they are reported apart.
    """

    dwi: np.ndarray | None
    affine: np.ndarray
    protocol: Protocol
    mask: np.ndarray
    fractions: np.ndarray
    truth: dict[str, np.ndarray]
    tissue_params: dict[str, dict[str, np.ndarray]]
    sigma: float
    labels: np.ndarray
    model: str
    snr: float
    seed: int
    voxel_size: float
    crop: tuple[slice, slice, slice] | None = None
    config: dict = field(default_factory=dict)
    masked_signals: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (X, Y, Z)."""
        return tuple(int(n) for n in self.mask.shape)

    @property
    def n_voxels(self) -> int:
        """Number of voxels in the brain mask."""
        return int(self.mask.sum())

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Scalar parameters of the model, in the model's order."""
        return tuple(p.name for p in SIGNAL_MODELS[self.model].parameters)

    @property
    def signals(self) -> np.ndarray:
        """Signals of the brain voxels, shape (n_voxels, n_measurements), float32, ``np.nonzero(mask)`` order."""
        if self.masked_signals is not None:
            return self.masked_signals
        return self.dwi[self.mask]

    def truth_in_mask(self) -> dict[str, np.ndarray]:
        """Ground truth of the brain voxels: (n_voxels,) per scalar, (n_voxels, 3) for ``"n"``."""
        return {name: np.asarray(value[self.mask], dtype=np.float64) for name, value in self.truth.items()}

    def groups(self, threshold: float = 0.9) -> np.ndarray:
        """Purity group of every voxel; see :func:`tissue_groups`."""
        return tissue_groups(self.fractions, self.mask, threshold=threshold)


# ---------------------------------------------------------------------------------------- helpers
def smooth_random_field(
    shape: Sequence[int], *, fwhm_voxels: float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian-filtered white noise, scaled to zero mean and unit standard deviation.

    Parameters
    ----------
    shape : sequence of int
        Grid shape.
    fwhm_voxels : float
        Full width at half maximum of the Gaussian kernel, in voxels (0: white noise).
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of float32, shape ``shape``
    """
    noise = rng.standard_normal(tuple(shape), dtype=np.float32)
    if fwhm_voxels > 0:
        sigma = fwhm_voxels / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        noise = ndimage.gaussian_filter(noise, sigma=sigma, mode="reflect")
    noise -= noise.mean(dtype=np.float64)
    std = float(noise.std(dtype=np.float64))
    return noise / std if std > 0 else noise


def tissue_groups(fractions: np.ndarray, mask: np.ndarray, *, threshold: float = 0.9) -> np.ndarray:
    """Pure-tissue and partial-volume groups.

    Parameters
    ----------
    fractions : ndarray, shape (..., 3)
        Volume fractions of :data:`TISSUES`.
    mask : ndarray of bool, shape (...)
    threshold : float
        A voxel is pure tissue t where ``fractions[..., t] >= threshold`` (> 0.5 so the groups are
        disjoint).

    Returns
    -------
    ndarray of int8, shape (...)
        0, 1, 2 for pure WM, GM, CSF; 3 (:data:`PARTIAL_VOLUME`) where no tissue reaches the threshold;
        -1 outside the mask.
    """
    if not 0.5 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be in (0.5, 1] so that a voxel is pure in one tissue at most.")
    groups = np.full(mask.shape, len(TISSUES), dtype=np.int8)
    for t in range(len(TISSUES)):
        groups[fractions[..., t] >= threshold] = t
    groups[~mask] = -1
    return groups


def boundary_distance(labels: np.ndarray) -> np.ndarray:
    """Distance (voxels) from every voxel to the nearest voxel of another label.

    Parameters
    ----------
    labels : ndarray of int, shape (X, Y, Z)
        A label map (dominant tissue, -1 for background: the brain surface counts as a boundary).

    Returns
    -------
    ndarray of float, shape (X, Y, Z)
        Euclidean distance (``scipy.ndimage.distance_transform_edt``) to the closest voxel with a
        different label: 1 next to a boundary.  A label alone in the array gets ``inf``; voxels next to
        the array's edge are not treated as boundary voxels.
    """
    distance = np.full(labels.shape, np.inf)
    values = np.unique(labels)
    if values.size < 2:
        return distance
    for value in values:
        region = labels == value
        distance[region] = ndimage.distance_transform_edt(region)[region]
    return distance


@lru_cache(maxsize=4)
def load_tissue_templates(voxel_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNI152 WM and GM probabilities and brain mask, resampled to an isotropic voxel size.

    Parameters
    ----------
    voxel_size : float
        Isotropic voxel size in mm.

    Returns
    -------
    wm, gm, brain : ndarray of float32, shape (X, Y, Z)
        Resampled probability maps (brain mask as a fraction in [0, 1]); read-only, cached.
    affine : ndarray, shape (4, 4)
        Voxel-to-MNI (mm) transform of the resampled grid, with the x axis stored radiologically
        (negative determinant, as FSL's MNI152 and HCP images), so that FSL-convention bvecs are the
        gradient directions in voxel axes.

    Notes
    -----
    The 1 mm templates (``nilearn.datasets.load_mni152_*_template(resolution=1)``, shipped with
    nilearn) are smoothed with a Gaussian of variance ``(s² - 1)/12`` voxels² (``s`` = voxel size in
    template voxels: the variance a box average of ``s`` voxels adds to a 1-voxel box) and then
    linearly interpolated on the new grid, ``new index i`` at ``template index s·i``; the first voxel
    centres coincide.  The new affine is therefore the template's times ``diag(s, s, s, 1)``.
    """
    from nilearn import datasets

    if not (np.isfinite(voxel_size) and 0.5 <= voxel_size <= 8.0):
        raise ValueError(f"voxel_size={voxel_size!r} mm must be between 0.5 and 8 (1.25 is HCP's, 2 is faster).")
    images = [
        datasets.load_mni152_wm_template(resolution=_TEMPLATE_RESOLUTION),
        datasets.load_mni152_gm_template(resolution=_TEMPLATE_RESOLUTION),
        datasets.load_mni152_brain_mask(resolution=_TEMPLATE_RESOLUTION),
    ]
    affine = np.asarray(images[0].affine, dtype=np.float64)
    zooms = np.asarray(images[0].header.get_zooms()[:3], dtype=np.float64)
    scale = voxel_size / zooms
    shape = np.asarray(images[0].shape[:3])
    new_shape = tuple(int(n) for n in np.floor((shape - 1) / scale + 1e-9).astype(int) + 1)
    smoothing = np.sqrt(np.maximum(scale**2 - 1.0, 0.0) / 12.0)
    maps = []
    for image in images:
        data = np.asarray(image.get_fdata(dtype=np.float32), dtype=np.float32)
        if np.any(smoothing > 0):
            data = ndimage.gaussian_filter(data, sigma=smoothing, mode="constant")
        data = ndimage.affine_transform(
            data, scale, offset=0.0, output_shape=new_shape, order=1, mode="constant", cval=0.0, prefilter=False
        )
        maps.append(np.clip(data, 0.0, 1.0).astype(np.float32))
    new_affine = affine @ np.diag([*scale, 1.0])
    if np.linalg.det(new_affine[:3, :3]) > 0:
        flip = np.eye(4)
        flip[0, 0] = -1.0
        flip[0, 3] = new_shape[0] - 1
        new_affine = new_affine @ flip
        maps = [np.ascontiguousarray(m[::-1]) for m in maps]
    for m in maps:
        m.setflags(write=False)
    new_affine.setflags(write=False)
    return maps[0], maps[1], maps[2], new_affine


def _resolve_crop(
    crop: Sequence[int] | Sequence[slice] | None, shape: tuple[int, int, int], brain: np.ndarray
) -> tuple[slice, slice, slice] | None:
    if crop is None:
        return None
    crop = tuple(crop)
    if len(crop) != 3:
        raise ValueError(f"crop={crop!r} needs 3 entries: sizes (nx, ny, nz) or slices, one per axis.")
    if all(isinstance(c, slice) for c in crop):
        slices = tuple(slice(*c.indices(n)[:2]) for c, n in zip(crop, shape))
    elif all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in crop):
        if any(c < 1 for c in crop):
            raise ValueError(f"crop sizes {crop} must be >= 1 voxel.")
        centre = np.round(ndimage.center_of_mass(brain >= 0.5)).astype(int)
        slices = []
        for c, n, mid in zip(crop, shape, centre):
            size = min(int(c), n)
            start = int(np.clip(mid - size // 2, 0, n - size))
            slices.append(slice(start, start + size))
        slices = tuple(slices)
    else:
        raise ValueError(f"crop={crop!r}: give three sizes (ints) around the brain centre, or three slices.")
    if any(s.stop - s.start < 1 for s in slices):
        raise ValueError(f"crop={crop!r} selects no voxel of the {shape} grid.")
    return slices


def _tissue_values(
    model: str, fields: dict[tuple[str, str], np.ndarray], b_max: float
) -> dict[str, dict[str, np.ndarray]]:
    values: dict[str, dict[str, np.ndarray]] = {}
    for tissue in TISSUES:
        values[tissue] = {}
        for name, (mean, std) in TISSUE_PARAMETERS[model][tissue].items():
            low, high = _LIMITS[name]
            values[tissue][name] = np.clip(mean + std * fields[tissue, name], low, high).astype(np.float32)
        if model == "msdki":
            # keep every shell before the turning point b = 3 / (D K) of the kurtosis expansion
            cap = _MSDKI_TURNING_MARGIN * 3.0 / (b_max * values[tissue]["D"])
            np.minimum(values[tissue]["K"], cap, out=values[tissue]["K"])
    return values


# ---------------------------------------------------------------------------------------- public
def make_phantom(
    *,
    model: str = "msdki",
    voxel_size: float = 1.25,
    snr: float = 10.0,
    seed: int = 0,
    crop: Sequence[int] | Sequence[slice] | None = None,
    protocol: Protocol | None = None,
    field_fwhm_mm: float = 10.0,
    image: bool = True,
) -> Phantom:
    """Simulate a diffusion acquisition of a brain with known tissue parameters.

    Parameters
    ----------
    model : {"msdki", "ball_stick"}
        Signal model of every tissue (values in :data:`TISSUE_PARAMETERS`).
    voxel_size : float
        Isotropic voxel size in mm (1.25 as HCP; 2 for speed; 0.5 to 8).
    snr : float
        b=0 signal-to-noise ratio of pure white matter: ``sigma = TISSUE_S0["WM"] / snr`` (raw units).
        Grey matter and CSF have a higher b=0 SNR (their S0 is higher).
    seed : int
        Seeds every random draw (parameter fields, fibre field, S0 field, noise).
    crop : (nx, ny, nz) or (slice, slice, slice), optional
        Simulate only a region: sizes of a box around the centre of the brain mask, or slices of the
        resampled template grid.  Truth maps of a crop equal the same region of the uncropped phantom
        (the fields are drawn on the whole grid); the noise is drawn for the crop only.
    protocol : Protocol, optional
        The acquisition; default :func:`varmap.simulation.hcp_protocol` (18 b=0 and 90 directions at
        b = 1000, 2000, 3000 s/mm²).
    field_fwhm_mm : float
        FWHM (mm) of the smooth random fields that vary each tissue parameter in space.
    image : bool
        Keep the 4-D image :attr:`Phantom.dwi` with background noise.  ``False`` keeps only the brain
        voxels' signals (:attr:`Phantom.signals`, identical to ``dwi[mask]`` with ``True``): whole-brain
        studies that never write the image save the memory of the background (5 GB at 1.25 mm).

    Returns
    -------
    Phantom

    Notes
    -----
    Geometry: :func:`load_tissue_templates` at ``voxel_size``.  The mask is the resampled brain mask
    >= 0.5; inside it WM and GM fractions are the resampled probabilities (rescaled to sum to 1 where
    they exceed it) and CSF is the rest, ``1 - WM - GM``.

    Tissue parameters: for tissue t and parameter p, ``mean_tp + std_tp * z_tp(x)`` where ``z_tp`` is
    a :func:`smooth_random_field` of FWHM ``field_fwhm_mm`` drawn on the whole template grid, clipped
    to a physical range (D, d_par, d_iso in [0.1, 3.5] µm²/ms, K in [0, 2.5], f in [0.005, 0.995]) and,
    for MS-DKI, ``K <= 0.95 · 3 / (D · b_max)`` so every shell lies before the turning point of the
    kurtosis expansion.  Ball-and-stick fibres follow one smooth unit vector field (three smooth random
    fields of FWHM 20 mm, normalised) shared by all tissues, so a mixed voxel has one fibre direction;
    the direction is only meaningful where white matter dominates.

    Signals: ``s = Σ_t w_t · S0_t · B(x) · φ(θ_t)`` with the tissue S0 of :data:`TISSUE_S0` and a
    smooth S0 field ``B = 1 + 0.05 z`` (coil inhomogeneity), then Rician noise of standard deviation
    ``sigma`` per channel (:func:`varmap.simulation.add_noise`).  Background voxels hold noise only.

    Ground truth of a voxel: the volume-fraction-weighted mean of its tissues' parameters (see
    :class:`Phantom`).

    Random streams: ``np.random.SeedSequence(seed).spawn(3)`` gives one generator for the fields, one
    for the noise of the brain voxels and one for the background noise.
    """
    if model not in TISSUE_PARAMETERS:
        raise ValueError(f"no phantom tissue values for model {model!r}; choose one of {sorted(TISSUE_PARAMETERS)}.")
    if not (np.isfinite(snr) and snr > 0):
        raise ValueError(f"snr={snr!r} must be a positive number (b=0 SNR of white matter).")
    if not (np.isfinite(field_fwhm_mm) and field_fwhm_mm >= 0):
        raise ValueError(f"field_fwhm_mm={field_fwhm_mm!r} must be >= 0 mm.")
    voxel_size = float(voxel_size)
    protocol = hcp_protocol() if protocol is None else protocol
    signal_model = get_signal_model(model, protocol)
    names = signal_model.parameter_names

    wm_full, gm_full, brain_full, affine_full = load_tissue_templates(voxel_size)
    full_shape = wm_full.shape
    slices = _resolve_crop(crop, full_shape, brain_full)
    region = slices if slices is not None else (slice(None),) * 3

    field_rng, noise_rng, background_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(3)
    )
    fwhm_voxels = field_fwhm_mm / voxel_size
    fields = {}
    for tissue in TISSUES:
        for name in names:
            fields[tissue, name] = smooth_random_field(full_shape, fwhm_voxels=fwhm_voxels, rng=field_rng)[region]
    s0_field = 1.0 + _S0_FIELD_STD * smooth_random_field(full_shape, fwhm_voxels=fwhm_voxels, rng=field_rng)[region]
    direction = None
    if signal_model.has_direction:
        components = [
            smooth_random_field(full_shape, fwhm_voxels=_ORIENTATION_FWHM_MM / voxel_size, rng=field_rng)[region]
            for _ in range(3)
        ]
        direction = np.stack(components, axis=-1)
        direction /= np.maximum(np.linalg.norm(direction, axis=-1, keepdims=True), 1e-12)

    wm, gm, brain = (np.array(m[region], dtype=np.float32) for m in (wm_full, gm_full, brain_full))
    affine = affine_full.copy()
    if slices is not None:
        affine[:3, 3] = affine_full[:3, :3] @ np.array([s.start for s in slices]) + affine_full[:3, 3]
    mask = brain >= 0.5
    tissue_sum = wm + gm
    over = tissue_sum > 1.0
    wm[over] /= tissue_sum[over]
    gm[over] /= tissue_sum[over]
    fractions = np.stack([wm, gm, np.clip(1.0 - wm - gm, 0.0, 1.0)], axis=-1)
    fractions[~mask] = 0.0
    labels = np.where(mask, np.argmax(fractions, axis=-1), -1).astype(np.int8)

    b_max = float(protocol.bvals.max())
    tissue_params = _tissue_values(model, fields, b_max)
    del fields
    for tissue in TISSUES:
        for name in names:
            tissue_params[tissue][name][~mask] = 0.0
    truth: dict[str, np.ndarray] = {}
    for name in names:
        truth[name] = np.sum(
            [fractions[..., t] * tissue_params[tissue][name] for t, tissue in enumerate(TISSUES)], axis=0
        ).astype(np.float32)
    S0_tissue = np.array([TISSUE_S0[t] for t in TISSUES], dtype=np.float32)
    truth["S0"] = np.where(mask, s0_field * (fractions @ S0_tissue), 0.0).astype(np.float32)
    if direction is not None:
        direction[~mask] = 0.0
        truth["n"] = direction.astype(np.float32)
    sigma = TISSUE_S0["WM"] / float(snr)

    # ---- signals of the brain voxels, chunk by chunk in np.nonzero(mask) order
    index = np.nonzero(mask)
    n_voxels = index[0].size
    n_meas = protocol.n_measurements
    signals = np.empty((n_voxels, n_meas), dtype=np.float32)
    logger.info("phantom: simulating %d brain voxels x %d measurements", n_voxels, n_meas)
    for start in range(0, n_voxels, _CHUNK):
        at = tuple(axis[start : start + _CHUNK] for axis in index)
        clean = np.zeros((at[0].size, n_meas))
        bias = s0_field[at].astype(np.float64)
        for t, tissue in enumerate(TISSUES):
            weight = fractions[at + (t,)].astype(np.float64)
            if not np.any(weight > 0):
                continue
            params = {name: tissue_params[tissue][name][at] for name in names}
            if direction is not None:
                params["n"] = direction[at]
            clean += signal_model.predict(params, S0=weight * TISSUE_S0[tissue] * bias)
        signals[start : start + _CHUNK] = add_noise(clean, sigma=sigma, kind="rician", rng=noise_rng)

    dwi = None
    masked_signals = signals
    if image:
        dwi = np.empty(mask.shape + (n_meas,), dtype=np.float32)
        dwi[mask] = signals
        masked_signals = None
        del signals
        background = np.nonzero(~mask)
        for start in range(0, background[0].size, _CHUNK):
            at = tuple(axis[start : start + _CHUNK] for axis in background)
            zeros = np.zeros((at[0].size, n_meas))
            dwi[at] = add_noise(zeros, sigma=sigma, kind="rician", rng=background_rng)

    config = {
        "varmap_version": __version__,
        "model": model,
        "voxel_size_mm": voxel_size,
        "snr": float(snr),
        "snr_definition": "b=0 SNR of pure white matter: sigma = S0_WM / snr",
        "sigma": sigma,
        "noise": "rician",
        "seed": int(seed),
        "crop": None if slices is None else [[s.start, s.stop] for s in slices],
        "template_grid_shape": list(full_shape),
        "shape": list(mask.shape),
        "n_brain_voxels": int(n_voxels),
        "tissues": list(TISSUES),
        "tissue_S0": dict(TISSUE_S0),
        "tissue_parameters": {t: {k: list(v) for k, v in TISSUE_PARAMETERS[model][t].items()} for t in TISSUES},
        "parameter_limits": {name: list(_LIMITS[name]) for name in names},
        "msdki_turning_point_margin": _MSDKI_TURNING_MARGIN if model == "msdki" else None,
        "field_fwhm_mm": float(field_fwhm_mm),
        "orientation_fwhm_mm": _ORIENTATION_FWHM_MM if direction is not None else None,
        "S0_field_relative_std": _S0_FIELD_STD,
        "templates": "nilearn MNI152 GM/WM templates and brain mask, resolution=1",
        "protocol": protocol.to_dict(),
    }
    return Phantom(
        dwi=dwi,
        affine=affine,
        protocol=protocol,
        mask=mask,
        fractions=fractions.astype(np.float32),
        truth=truth,
        tissue_params=tissue_params,
        sigma=sigma,
        labels=labels,
        model=model,
        snr=float(snr),
        seed=int(seed),
        voxel_size=voxel_size,
        crop=slices,
        config=config,
        masked_signals=masked_signals,
    )


_README = """\
Ground truth of a varmap digital brain phantom
=============================================

Model: {model}.  Voxel size {voxel_size:g} mm, grid {shape}, {n_voxels} brain voxels.
Noise: Rician, sigma = {sigma:g} per channel (raw units) = S0 of pure white matter ({s0_wm:g}) / SNR {snr:g}.

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

and its ground-truth parameter maps are the VOLUME-FRACTION-WEIGHTED MEAN of the tissue parameters:

    theta(x) = sum_t w_t(x) * theta_t(x).

(Not the S0-weighted mean, and the mixed signal is generally not the model's signal at theta(x):
errors in partial-volume voxels include this model mismatch.)  Maps are 0 outside the brain mask.

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
        From :func:`make_phantom` (with ``image=True``).
    output_dir : path
        Folder to create.  Written into a temporary folder beside it and renamed at the end.
    force : bool
        Replace an existing ``output_dir``.

    Returns
    -------
    list of Path
        ``dwi.nii.gz`` (float32, X×Y×Z×N), ``dwi.bval`` (s/mm², one row), ``dwi.bvec`` (three rows),
        ``mask.nii.gz`` (uint8), ``phantom.json`` and, under ``truth/``, one map per model parameter
        (``D.nii.gz``, ...; ``n.nii.gz`` X×Y×Z×3 for directional models), ``S0.nii.gz``,
        ``fraction_wm/gm/csf.nii.gz``, ``labels.nii.gz`` and ``README.txt``.

    Raises
    ------
    FileExistsError
        If ``output_dir`` exists and ``force`` is false (the message says to pass ``--force``).
    ValueError
        If the phantom was built with ``image=False``.
    """
    from .io import atomic_output_dir  # the numerical core stays free of I/O imports

    if phantom.dwi is None:
        raise ValueError("this phantom has no image (built with image=False); rebuild it with make_phantom(image=True).")
    output_dir = Path(output_dir)
    names: list[str] = []
    with atomic_output_dir(output_dir, force=force) as staging:
        (staging / "truth").mkdir()

        def save(array: np.ndarray, name: str, dtype=np.float32) -> None:
            _save_nifti(array, phantom.affine, staging / name, dtype)
            names.append(name)

        save(phantom.dwi, "dwi.nii.gz")
        bvals = phantom.protocol.bvals * 1000.0
        integer = np.allclose(bvals, np.round(bvals), atol=1e-6)
        np.savetxt(staging / "dwi.bval", bvals[None], fmt="%d" if integer else "%.6g")
        np.savetxt(staging / "dwi.bvec", phantom.protocol.bvecs.T, fmt="%.8f")
        names += ["dwi.bval", "dwi.bvec"]
        save(phantom.mask, "mask.nii.gz", np.uint8)
        for name, value in phantom.truth.items():
            save(value, f"truth/{name}.nii.gz")
        for t, tissue in enumerate(TISSUES):
            save(phantom.fractions[..., t], f"truth/fraction_{tissue.lower()}.nii.gz")
        save(phantom.labels.astype(np.int16) + 1, "truth/labels.nii.gz", np.uint8)
        (staging / "truth" / "README.txt").write_text(_readme(phantom))
        (staging / "phantom.json").write_text(json.dumps(phantom.config, indent=2))
        names += ["truth/README.txt", "phantom.json"]
    return [output_dir / name for name in names]


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, dtype) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_sform(affine, code="mni")
    image.set_qform(affine, code="mni")
    image.set_data_dtype(dtype)
    nib.save(image, path)


def _readme(phantom: Phantom) -> str:
    names = phantom.parameter_names
    model = get_signal_model(phantom.model, phantom.protocol)
    param_lines = "\n".join(
        f"{p.name + '.nii.gz':<21} {p.description} ({p.unit}), fraction-weighted mean of the tissue values"
        for p in model.parameters
    )
    direction_line = ""
    if "n" in phantom.truth:
        direction_line = (
            "n.nii.gz              fibre direction (unit vector in voxel axes, X x Y x Z x 3; n and -n are\n"
            "                      one fibre); one smooth field shared by all tissues, meaningful where\n"
            "                      white matter dominates\n"
        )
    tissue_lines = "\n".join(
        f"    {tissue:<4} "
        + ", ".join(f"{name} {mean:g} +- {std:g}" for name, (mean, std) in TISSUE_PARAMETERS[phantom.model][tissue].items())
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
        s0_std=_S0_FIELD_STD,
        param_lines=param_lines,
        direction_line=direction_line,
        tissue_lines=tissue_lines,
    ) + f"\nNames of the parameters in this model: {', '.join(names)}.\n"
