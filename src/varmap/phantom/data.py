"""The phantom's container: images, geometry, ground truth and settings of one simulated brain."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..io import DWIImage
from ..protocol import Protocol
from ..signal_models import SIGNAL_MODELS
from .labels import tissue_groups

__all__ = ["Phantom"]


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
        Ground truth of the voxel: every scalar parameter of the model, shape (X, Y, Z), as the model
        can report it (see Notes); ``"S0"``, the true b=0 signal; and for directional models ``"n"``,
        shape (X, Y, Z, 3), the unit fibre direction in voxel axes.  Zero outside the mask.
    tissue_params : dict of dict of ndarray
        ``tissue_params[tissue][name]``: the pure-tissue parameter map of each tissue, shape (X, Y, Z),
        defined everywhere in the mask (whatever the tissue's fraction).
    sigma : float
        Noise standard deviation of each (real and imaginary) channel, raw units; with a noise field,
        that of the least noisy brain voxels (see :attr:`sigma_map`).
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
    noise_field : ndarray, shape (X, Y, Z), float32, or None
        Factor of each voxel's noise level (1 to 3 over the whole brain) when the phantom was built
        with ``noise_field=True``; ``None``: one noise level.
    mixture_truth : dict of ndarray
        Every scalar parameter of the model as the volume-fraction-weighted mean of the tissue
        values, shape (X, Y, Z) (equal to :attr:`truth` in pure voxels).

    Notes
    -----
    A voxel with tissue fractions :math:`w_t` (WM, GM, CSF) measures

    .. math:: s = \\sum_t w_t\\, S_{0,t}\\, B(x)\\, \\phi(\\theta_t(x)) + \\text{Rician noise}

    with :math:`S_{0,t}` from :data:`TISSUE_S0` and :math:`B` a smooth multiplicative S0 field; its
    true S0 is :math:`B \\sum_t w_t S_{0,t}`.  A mixed voxel's signal is in general not the model's
    signal at any parameter value, nor at the volume-fraction-weighted mean
    :math:`\\sum_t w_t \\theta_t` (:attr:`mixture_truth`): two MS-DKI compartments are not one, and the
    apparent kurtosis of a mixture gains the spread of D between them.  The truth of a mixed voxel
    is therefore the model fitted by least squares to its noiseless signal
    (:func:`~varmap.phantom.apparent.apparent_parameters`): what a correct estimator of the model
    converges to as the noise vanishes.  Pure voxels (one fraction 1) hold their tissue's values.
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
    noise_field: np.ndarray | None = field(default=None, repr=False)
    mixture_truth: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (X, Y, Z)."""
        return tuple(int(n) for n in self.mask.shape)

    @property
    def sigma_map(self) -> np.ndarray:
        """True noise standard deviation of every voxel, raw units, shape (X, Y, Z), float32.

        ``sigma`` everywhere without a noise field; the truth a noise-map estimator should find.
        """
        if self.noise_field is None:
            return np.full(self.shape, self.sigma, dtype=np.float32)
        return (self.sigma * self.noise_field).astype(np.float32)

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

    def dwi_image(self) -> DWIImage:
        """The noisy series as the image pipeline reads a scan (named ``"phantom"`` in messages).

        A phantom built without its image (``image=False``) gives its brain voxels' signals with zeros
        outside the mask, scattered into the grid one slab of volumes at a time as they are read, so
        that a whole-brain phantom never holds its full 4-D array.

        Returns
        -------
        DWIImage
        """
        data = self.dwi if self.dwi is not None else _MaskedSeries(self.masked_signals, self.mask)
        return DWIImage.in_memory(data, self.affine, "phantom")

    def truth_in_mask(self) -> dict[str, np.ndarray]:
        """Ground truth of the brain voxels, in ``np.nonzero(mask)`` order.

        Returns
        -------
        dict of ndarray
            float64, shape (n_voxels,) per scalar (and ``"S0"``), (n_voxels, 3) for ``"n"``.
        """
        return {name: np.asarray(value[self.mask], dtype=np.float64) for name, value in self.truth.items()}

    def groups(self, threshold: float = 0.9) -> np.ndarray:
        """Purity group of every voxel.

        Parameters
        ----------
        threshold : float
            A voxel is pure tissue t where its fraction of t is at least ``threshold`` (in (0.5, 1]).

        Returns
        -------
        ndarray of int8, shape (X, Y, Z)
            0, 1, 2 for pure WM, GM, CSF, 3 for partial volume, -1 outside the mask; see
            :func:`~varmap.phantom.labels.tissue_groups`.
        """
        return tissue_groups(self.fractions, self.mask, threshold=threshold)


class _MaskedSeries:
    """Brain voxels' signals (n_voxels, n_volumes) read as a 4-D series, zero outside the mask: a
    nibabel data proxy that builds only the volumes indexed (``series[..., start:stop]``,
    ``series[x, y, z, volume]``)."""

    is_proxy = True
    ndim = 4

    def __init__(self, signals: np.ndarray, mask: np.ndarray) -> None:
        self._signals, self._mask = signals, mask
        self.shape = (*mask.shape, signals.shape[1])
        self.dtype = signals.dtype

    def __getitem__(self, key: object) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if key and key[0] is Ellipsis:
            key = (slice(None),) * (self.ndim + 1 - len(key)) + key[1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        columns = self._signals[:, key[3]]
        grid = np.zeros(self._mask.shape + columns.shape[1:], dtype=self.dtype)
        grid[self._mask] = columns
        return grid[key[:3]]

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)
