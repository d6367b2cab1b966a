"""Synthesis of the phantom: fields, tissue values, mixed signals and noise, in named steps."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..protocol import Protocol
from ..random_streams import numpy_stream
from ..signal_models import SignalModel, get_signal_model
from ..simulation import add_noise, hcp_protocol
from .apparent import TRUTH_DEFINITION, apparent_parameters
from .data import Phantom
from .fields import (
    NOISE_FIELD_COILS,
    NOISE_FIELD_RANGE,
    ORIENTATION_FWHM_MM,
    S0_FIELD_STD,
    fibre_field,
    noise_field,
    parameter_fields,
    s0_field,
)
from .geometry import TissueGeometry, load_tissue_templates, resolve_crop, tissue_geometry
from .tissues import (
    MSDKI_TURNING_MARGIN,
    PARAMETER_LIMITS,
    TISSUE_PARAMETERS,
    TISSUE_S0,
    TISSUES,
    tissue_parameter_maps,
)

__all__ = ["make_phantom"]

logger = logging.getLogger("varmap")

# Voxels simulated at once: bounds memory to a few hundred MB at 288 measurements.  Part of the noise
# stream's definition (changing it changes the noise of a seed), hence a constant.
_CHUNK = 32_768
#: A voxel with a tissue fraction of at least 1 minus this is pure: its truth is that tissue's values.
_PURE_FRACTION_TOL = 1e-6
#: Named random stream (:mod:`varmap.random_streams`) of the noise-level field's coils.
_NOISE_FIELD_STREAM = "phantom noise field"


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
    noise_field: bool = False,
) -> Phantom:
    """Simulate a diffusion acquisition of a brain with known tissue parameters.

    Parameters
    ----------
    model : {"msdki", "ball_stick"}
        Signal model of every tissue (values in :data:`~varmap.phantom.tissues.TISSUE_PARAMETERS`).
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
        (the fields are drawn on the whole grid; mixed voxels' truth to the precision of its fit, about
        1e-6); the noise is drawn for the crop only.
    protocol : Protocol, optional
        The acquisition; default :func:`varmap.simulation.hcp_protocol` (18 b=0 and 90 directions at
        b = 1000, 2000, 3000 s/mm²).
    field_fwhm_mm : float
        FWHM (mm) of the smooth random fields that vary each tissue parameter in space.
    image : bool
        Keep the 4-D image :attr:`Phantom.dwi` with background noise.  ``False`` keeps only the brain
        voxels' signals (:attr:`Phantom.signals`, identical to ``dwi[mask]`` with ``True``): whole-brain
        studies that never write the image save the memory of the background (5 GB at 1.25 mm).
    noise_field : bool
        Let the noise level vary smoothly over the head, as parallel imaging makes it follow the coil
        sensitivities and g-factor: the noise standard deviation becomes ``sigma`` times a factor
        from 1 to 3 over the brain (:func:`~varmap.phantom.fields.noise_field`), in the background
        too; :attr:`Phantom.sigma_map` holds each voxel's.  Off by default: one noise level.

    Returns
    -------
    Phantom

    Raises
    ------
    ValueError
        On an unknown ``model``, a non-positive ``snr``, a negative ``field_fwhm_mm``, a ``voxel_size``
        outside [0.5, 8] mm or a bad ``crop``.

    Notes
    -----
    Geometry: :func:`~varmap.phantom.geometry.load_tissue_templates` at ``voxel_size``.  The mask is
    the resampled brain mask >= 0.5; inside it WM and GM fractions are the resampled probabilities
    (rescaled to sum to 1 where they exceed it) and CSF is the rest, ``1 - WM - GM``.

    Tissue parameters: for tissue t and parameter p, ``mean_tp + std_tp * z_tp(x)`` where ``z_tp`` is
    a :func:`~varmap.phantom.fields.smooth_random_field` of FWHM ``field_fwhm_mm`` drawn on the whole
    template grid, clipped to a physical range (D, d_par, d_iso in [0.1, 3.5] µm²/ms, K in [0, 2.5],
    f in [0.005, 0.995]) and, for MS-DKI, ``K <= 0.95 · 3 / (D · b_max)`` so every shell lies before
    the turning point of the kurtosis expansion.  Ball-and-stick fibres follow one smooth unit vector
    field (three smooth random fields of FWHM 20 mm, normalised) shared by all tissues, so a mixed
    voxel has one fibre direction; the direction is only meaningful where white matter dominates.

    Signals: ``s = Σ_t w_t · S0_t · B(x) · φ(θ_t)`` with the tissue S0 of
    :data:`~varmap.phantom.tissues.TISSUE_S0` and a smooth S0 field ``B = 1 + 0.05 z`` (coil
    inhomogeneity), then Rician noise of standard deviation ``sigma`` per channel
    (:func:`varmap.simulation.add_noise`).  Background voxels hold noise only.

    Ground truth of a voxel (see :class:`Phantom`): in a pure voxel its tissue's parameters; in a
    mixed voxel the model fitted (least squares) to its noiseless signal
    (:mod:`~varmap.phantom.apparent`), which is what the model can report there.  The
    volume-fraction-weighted mean of the tissues' parameters is kept as :attr:`Phantom.mixture_truth`.

    Random streams: ``np.random.SeedSequence(seed).spawn(3)`` gives one generator for the fields, one
    for the noise of the brain voxels and one for the background noise; the noise-level field's coils
    come from the named stream ``"phantom noise field"`` of ``seed`` (:mod:`varmap.random_streams`),
    so with and without it every other draw is the same.
    """
    _check_arguments(model, snr, field_fwhm_mm)
    voxel_size = float(voxel_size)
    protocol = hcp_protocol() if protocol is None else protocol
    signal_model = get_signal_model(model, protocol)
    templates = load_tissue_templates(voxel_size)
    grid_shape = templates[0].shape
    crop_region = resolve_crop(crop, grid_shape, templates[2])
    region = crop_region if crop_region is not None else (slice(None),) * 3
    field_rng, noise_rng, background_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(3)
    )

    fwhm_voxels = field_fwhm_mm / voxel_size
    fields = parameter_fields(
        signal_model.parameter_names, grid_shape=grid_shape, region=region, fwhm_voxels=fwhm_voxels, rng=field_rng
    )
    bias = s0_field(grid_shape=grid_shape, region=region, fwhm_voxels=fwhm_voxels, rng=field_rng)
    direction = None
    if signal_model.has_direction:
        direction = fibre_field(grid_shape=grid_shape, region=region, voxel_size=voxel_size, rng=field_rng)

    geometry = tissue_geometry(templates, crop_region)
    tissue_params = tissue_parameter_maps(model, fields, b_max=float(protocol.bvals.max()), mask=geometry.mask)
    del fields
    truth = _ground_truth(signal_model.parameter_names, geometry, tissue_params, bias, direction)
    brain = _NoiselessBrain(signal_model, geometry, tissue_params, bias, direction)
    mixture_truth = {name: truth[name].copy() for name in signal_model.parameter_names}
    _fit_mixed_voxels(truth, brain)

    sigma = TISSUE_S0["WM"] / float(snr)
    level = None
    if noise_field:
        level = _noise_field(templates[2], region, voxel_size, seed)
    signals = _brain_signals(brain, sigma=sigma, noise_field=level, rng=noise_rng)
    dwi = None
    if image:
        dwi = _brain_image(signals, geometry.mask)
        signals = None  # the image holds them now: free the copy before drawing the background
        _add_background_noise(dwi, geometry.mask, sigma=sigma, noise_field=level, rng=background_rng)

    phantom = Phantom(
        dwi=dwi,
        affine=geometry.affine,
        protocol=protocol,
        mask=geometry.mask,
        fractions=geometry.fractions.astype(np.float32),
        truth=truth,
        mixture_truth=mixture_truth,
        tissue_params=tissue_params,
        sigma=sigma,
        labels=geometry.labels,
        model=model,
        snr=float(snr),
        seed=int(seed),
        voxel_size=voxel_size,
        crop=crop_region,
        masked_signals=signals,
        noise_field=level,
    )
    phantom.config = _config(phantom, grid_shape=grid_shape, field_fwhm_mm=field_fwhm_mm)
    return phantom


def _check_arguments(model: str, snr: float, field_fwhm_mm: float) -> None:
    if model not in TISSUE_PARAMETERS:
        raise ValueError(f"no phantom tissue values for model {model!r}; choose one of {sorted(TISSUE_PARAMETERS)}.")
    if not (np.isfinite(snr) and snr > 0):
        raise ValueError(f"snr={snr!r} must be a positive number (b=0 SNR of white matter).")
    if not (np.isfinite(field_fwhm_mm) and field_fwhm_mm >= 0):
        raise ValueError(f"field_fwhm_mm={field_fwhm_mm!r} must be >= 0 mm.")


def _noise_field(brain: np.ndarray, region: tuple[slice, slice, slice], voxel_size: float, seed: int) -> np.ndarray:
    """The noise-level factor of the phantom's region, from its named random stream."""
    return noise_field(brain=brain, region=region, voxel_size=voxel_size, rng=numpy_stream(seed, _NOISE_FIELD_STREAM))


def _noise_level(sigma: float, noise_field: np.ndarray | None, at: tuple[np.ndarray, ...]) -> float | np.ndarray:
    """Noise standard deviation of the voxels ``at``: ``sigma``, or (n, 1) values with a noise field."""
    if noise_field is None:
        return sigma
    return sigma * noise_field[at].astype(np.float64)[:, None]


def _ground_truth(
    names: tuple[str, ...],
    geometry: TissueGeometry,
    tissue_params: dict[str, dict[str, np.ndarray]],
    bias: np.ndarray,
    direction: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Fraction-weighted mean of the tissue parameters, true S0 and fibre direction; 0 outside the mask.

    The scalar parameters of mixed voxels are then replaced by :func:`_fit_mixed_voxels`.
    """
    fractions, mask = geometry.fractions, geometry.mask
    truth: dict[str, np.ndarray] = {}
    for name in names:
        truth[name] = np.sum(
            [fractions[..., t] * tissue_params[tissue][name] for t, tissue in enumerate(TISSUES)], axis=0
        ).astype(np.float32)
    S0_tissue = np.array([TISSUE_S0[t] for t in TISSUES], dtype=np.float32)
    truth["S0"] = np.where(mask, bias * (fractions @ S0_tissue), 0.0).astype(np.float32)
    if direction is not None:
        truth["n"] = np.where(mask[..., None], direction, 0.0).astype(np.float32)
    return truth


@dataclass(frozen=True)
class _NoiselessBrain:
    """What the noiseless signal of a brain voxel depends on: the model, the tissues' fractions and
    values, the S0 field and the fibre direction."""

    signal_model: SignalModel
    geometry: TissueGeometry
    tissue_params: dict[str, dict[str, np.ndarray]]
    bias: np.ndarray
    direction: np.ndarray | None

    def signals(self, at: tuple[np.ndarray, ...]) -> np.ndarray:
        """Noiseless signals (n, n_measurements) float64 of the voxels ``at``: the tissues' signals, each
        weighted by its volume fraction, its S0 and the S0 field, summed."""
        clean = np.zeros((at[0].size, self.signal_model.protocol.n_measurements))
        voxel_bias = self.bias[at].astype(np.float64)
        for t, tissue in enumerate(TISSUES):
            weight = self.geometry.fractions[at + (t,)].astype(np.float64)
            if not np.any(weight > 0):
                continue
            params = {name: self.tissue_params[tissue][name][at] for name in self.signal_model.parameter_names}
            if self.direction is not None:
                params["n"] = self.direction[at]
            clean += self.signal_model.predict(params, S0=weight * TISSUE_S0[tissue] * voxel_bias)
        return clean


def _brain_signals(
    brain: _NoiselessBrain, *, sigma: float, noise_field: np.ndarray | None, rng: np.random.Generator
) -> np.ndarray:
    """Noisy signals of the brain voxels, (n_voxels, n_measurements) float32 in ``np.nonzero(mask)`` order.

    The noiseless signals plus Rician noise of standard deviation ``sigma`` (times ``noise_field``
    there, when given); chunks of :data:`_CHUNK` voxels draw from ``rng`` one after the other.
    """
    index = np.nonzero(brain.geometry.mask)
    n_voxels = index[0].size
    n_meas = brain.signal_model.protocol.n_measurements
    signals = np.empty((n_voxels, n_meas), dtype=np.float32)
    logger.info("phantom: simulating %d brain voxels x %d measurements", n_voxels, n_meas)
    for start in range(0, n_voxels, _CHUNK):
        at = tuple(axis[start : start + _CHUNK] for axis in index)
        level = _noise_level(sigma, noise_field, at)
        signals[start : start + _CHUNK] = add_noise(brain.signals(at), sigma=level, kind="rician", rng=rng)
    return signals


def _fit_mixed_voxels(truth: dict[str, np.ndarray], brain: _NoiselessBrain) -> None:
    """Replace, in place, the truth of every mixed voxel by the model fitted to its noiseless signal.

    Mixed: no tissue fraction of at least ``1 - _PURE_FRACTION_TOL``
    (:func:`~varmap.phantom.apparent.apparent_parameters`).  Pure voxels keep their tissue's values,
    which the fit would return; the fibre direction and S0 stay as they are.
    """
    fractions = brain.geometry.fractions
    mixed = np.nonzero(brain.geometry.mask & (fractions.max(axis=-1) < 1.0 - _PURE_FRACTION_TOL))
    logger.info("phantom: fitting the model to the noiseless signals of %d mixed voxels", mixed[0].size)
    names = brain.signal_model.parameter_names
    for start in range(0, mixed[0].size, _CHUNK):
        at = tuple(axis[start : start + _CHUNK] for axis in mixed)
        for name, value in apparent_parameters(brain.signal_model, brain.signals(at)).items():
            if name in names:
                truth[name][at] = value


def _brain_image(signals: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The 4-D float32 image holding ``signals`` in the mask (background left unset)."""
    dwi = np.empty(mask.shape + signals.shape[1:], dtype=np.float32)
    dwi[mask] = signals
    return dwi


def _add_background_noise(
    dwi: np.ndarray, mask: np.ndarray, *, sigma: float, noise_field: np.ndarray | None, rng: np.random.Generator
) -> None:
    """Fill the voxels outside ``mask`` with Rician noise of a zero signal, in place, chunk by chunk."""
    background = np.nonzero(~mask)
    for start in range(0, background[0].size, _CHUNK):
        at = tuple(axis[start : start + _CHUNK] for axis in background)
        zeros = np.zeros((at[0].size, dwi.shape[-1]))
        dwi[at] = add_noise(zeros, sigma=_noise_level(sigma, noise_field, at), kind="rician", rng=rng)


def _config(phantom: Phantom, *, grid_shape: tuple[int, ...], field_fwhm_mm: float) -> dict:
    """Every setting and tissue value of a phantom, JSON-serialisable (written as ``phantom.json``)."""
    model, names = phantom.model, phantom.parameter_names
    has_direction = "n" in phantom.truth
    return {
        "varmap_version": __version__,
        "model": model,
        "voxel_size_mm": phantom.voxel_size,
        "snr": phantom.snr,
        "snr_definition": "b=0 SNR of pure white matter: sigma = S0_WM / snr",
        "sigma": phantom.sigma,
        "noise": "rician",
        "truth": TRUTH_DEFINITION,
        "seed": phantom.seed,
        "crop": None if phantom.crop is None else [[s.start, s.stop] for s in phantom.crop],
        "template_grid_shape": list(grid_shape),
        "shape": list(phantom.shape),
        "n_brain_voxels": phantom.n_voxels,
        "tissues": list(TISSUES),
        "tissue_S0": dict(TISSUE_S0),
        "tissue_parameters": {t: {k: list(v) for k, v in TISSUE_PARAMETERS[model][t].items()} for t in TISSUES},
        "parameter_limits": {name: list(PARAMETER_LIMITS[name]) for name in names},
        "msdki_turning_point_margin": MSDKI_TURNING_MARGIN if model == "msdki" else None,
        "field_fwhm_mm": float(field_fwhm_mm),
        "orientation_fwhm_mm": ORIENTATION_FWHM_MM if has_direction else None,
        "S0_field_relative_std": S0_FIELD_STD,
        "templates": "nilearn MNI152 GM/WM templates and brain mask, resolution=1",
        "protocol": phantom.protocol.to_dict(),
    } | _noise_field_config(phantom)


def _noise_field_config(phantom: Phantom) -> dict:
    """The noise-level field's settings (nothing without one, so that default phantoms keep their json)."""
    if phantom.noise_field is None:
        return {}
    in_brain = phantom.noise_field[phantom.mask]
    return {
        "noise_field": {
            "model": "1/sqrt(sum of squared coil sensitivities), rescaled in log over the whole brain",
            "range_over_brain": list(NOISE_FIELD_RANGE),
            "n_coils": NOISE_FIELD_COILS,
            "random_stream": _NOISE_FIELD_STREAM,
            "range_in_this_mask": [float(in_brain.min()), float(in_brain.max())] if in_brain.size else None,
        }
    }
