"""Every file varmap reads or writes: NIfTI, FSL bvals/bvecs, checkpoints and JSON sidecars.

This is the only place where axes and dtypes change.  Images are read lazily through nibabel and only
the voxels of a mask are ever held in memory, as a ``(n_voxels, n_volumes)`` float32 matrix; the
whole 4-D image is never copied, and never as float64.  Maps go back into image space as float32
NIfTI files that keep the input's affine and spatial header.  Outputs are written into a temporary
folder beside the destination and moved into place at the end (:func:`atomic_output_dir`), so an
interrupted run never leaves a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from isal import igzip, isal_zlib

from .protocol import Protocol, ProtocolError

__all__ = [
    "InputError",
    "DWIImage",
    "open_dwi",
    "load_dwi",
    "load_protocol",
    "load_mask",
    "load_noise_map",
    "compute_mask",
    "extract_voxels",
    "to_image_space",
    "save_map",
    "save_json",
    "save_checkpoint",
    "load_checkpoint",
    "check_output_dir",
    "atomic_output_dir",
    "sha256sum",
    "check_input_file",
    "NIFTI_SUFFIXES",
]

logger = logging.getLogger("varmap")

#: File name endings accepted for images.
NIFTI_SUFFIXES = (".nii", ".nii.gz")

#: Largest float64 slab (bytes) read from the image at once while extracting voxels.
_SLAB_BYTES = 128 * 2**20


class InputError(ValueError):
    """Input files that varmap cannot use; the message names the file, what is wrong and the fix."""


# ---------------------------------------------------------------------------------------------- files
def check_input_file(path: str | PathLike, what: str) -> Path:
    """Return ``path`` as a :class:`Path` if it is an existing file.

    Raises
    ------
    FileNotFoundError
        Naming ``what`` the file should have been ("DWI image", "bvals file", ...).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist; check the path.")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} is not a file; give the path of the file itself.")
    return path


def sha256sum(path: str | PathLike, block_size: int = 2**20) -> str:
    """SHA-256 checksum (hex) of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_nifti(path: Path, what: str) -> Any:
    import nibabel as nib

    if not str(path).endswith(NIFTI_SUFFIXES):
        raise InputError(f"{what} {path} is not a NIfTI file; give a .nii or .nii.gz image.")
    try:
        image = nib.load(path, keep_file_open=True)
    except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, ValueError...
        message = str(err).replace("\n", " ")
        raise InputError(f"{what} {path} cannot be read as NIfTI ({message}); check the file.") from None
    if str(path).endswith(".gz"):
        # the same image with its voxels decompressed by ISA-L, about 1.6x as fast as zlib (a whole-brain
        # series spends most of its read decompressing)
        with _reading(path, what):
            image = type(image).from_stream(igzip.open(path, "rb"))
    return image


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn the errors of reading an image's voxel data into an :class:`InputError` naming the file.

    nibabel reads the header when it opens a file and the voxels only when asked, so a truncated or
    corrupt ``.nii.gz`` (EOFError, a CRC or zlib error) or a short ``.nii`` fails here.
    """
    try:
        yield
    except (OSError, EOFError, ValueError, zlib.error, isal_zlib.error) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        raise InputError(
            f"{what} {path} cannot be read: its voxel data are truncated or corrupt ({message}); copy or "
            f"export the file again."
        ) from None


# ---------------------------------------------------------------------------------------------- DWI
@dataclass
class DWIImage:
    """A 4-D diffusion-weighted image opened lazily: header and geometry now, voxels on demand.

    Attributes
    ----------
    path : Path
    image : nibabel.Nifti1Image
        Image with a lazy data proxy (no voxel data read yet).
    shape : tuple of int
        (X, Y, Z, n_volumes).
    affine : ndarray, shape (4, 4)
    header : nibabel header
    """

    path: Path
    image: Any
    shape: tuple[int, int, int, int]
    affine: np.ndarray
    header: Any

    @classmethod
    def in_memory(cls, data: Any, affine: np.ndarray, name: str) -> "DWIImage":
        """A series held in memory, read as an image file is: simulated scans and phantoms.

        Parameters
        ----------
        data : array-like, shape (X, Y, Z, n_volumes)
            An array, or an object with ``shape``, ``dtype`` and ``data[..., start:stop]`` (a nibabel data
            proxy) that gives volumes on demand.
        affine : ndarray, shape (4, 4)
        name : str
            What messages call the image (its ``path``).
        """
        import nibabel as nib

        image = nib.Nifti1Image(data, np.asarray(affine))
        return cls(path=Path(name), image=image, shape=tuple(int(n) for n in data.shape),
                   affine=np.asarray(affine), header=image.header)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """(X, Y, Z)."""
        return self.shape[:3]

    @property
    def n_volumes(self) -> int:
        """Number of volumes (measurements)."""
        return self.shape[3]

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel size in mm."""
        return tuple(float(z) for z in self.header.get_zooms()[:3])

    def volumes(self, start: int, stop: int) -> np.ndarray:
        """Volumes ``start:stop`` as float32, shape (X, Y, Z, stop - start).

        Raises
        ------
        InputError
            If the file's voxel data cannot be read (truncated or corrupt), naming the file.
        """
        with _reading(self.path, "DWI image"):
            return np.asarray(self.image.dataobj[..., start:stop], dtype=np.float32)

    def mean_volume(self, indices: np.ndarray) -> np.ndarray:
        """Mean of the volumes ``indices`` (3-D float32); non-finite values count as 0."""
        total = np.zeros(self.spatial_shape, dtype=np.float64)
        for index in np.atleast_1d(indices):
            volume = self.volumes(int(index), int(index) + 1)[..., 0]
            total += np.nan_to_num(volume, nan=0.0, posinf=0.0, neginf=0.0)
        return (total / max(len(np.atleast_1d(indices)), 1)).astype(np.float32)

    def extract(self, mask: np.ndarray, *, progress: bool = False) -> np.ndarray:
        """Signals of the voxels in ``mask``: float32 array (n_voxels, n_volumes), C order.

        Voxels are ordered as ``np.nonzero(mask)`` (C order), matching :func:`to_image_space`.  The
        image is read in slabs of volumes, so memory holds the output plus one slab.
        """
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.spatial_shape:
            raise InputError(f"mask shape {mask.shape} differs from the image's {self.spatial_shape}.")
        n_voxels = int(mask.sum())
        out = np.empty((n_voxels, self.n_volumes), dtype=np.float32)
        per_volume = 8 * int(np.prod(self.spatial_shape))
        step = max(1, min(self.n_volumes, _SLAB_BYTES // max(per_volume, 1)))
        starts = range(0, self.n_volumes, step)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="reading volumes", unit="slab", leave=False)
        for start in starts:
            stop = min(start + step, self.n_volumes)
            out[:, start:stop] = self.volumes(start, stop)[mask]
        return out


def open_dwi(path: str | PathLike) -> DWIImage:
    """Open a 4-D diffusion-weighted NIfTI image, holding none of its voxels.

    The last volume is read once and dropped, so that a truncated or corrupt file is refused now,
    before any heavy work (a ``.nii.gz`` is decompressed to its end, an uncompressed ``.nii`` only
    checked for its length).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    InputError
        If it is not a readable NIfTI image, not 4-D, or its voxel data are truncated or corrupt.
    """
    path = check_input_file(path, "DWI image")
    image = _load_nifti(path, "DWI image")
    shape = tuple(int(n) for n in image.shape)
    if len(shape) != 4:
        raise InputError(
            f"DWI image {path} has {len(shape)} dimensions {shape}; varmap needs a 4-D series "
            f"(x, y, z, volumes). Give the diffusion series, not a single volume or a derived map."
        )
    if shape[3] < 2:
        raise InputError(f"DWI image {path} has only {shape[3]} volume; a diffusion series needs several.")
    dwi = DWIImage(path=path, image=image, shape=shape, affine=np.asarray(image.affine), header=image.header)
    if not _gzip_length_matches(path, image):
        dwi.volumes(shape[3] - 1, shape[3])  # decompresses to the end: the error names what is wrong
    return dwi


def _gzip_length_matches(path: Path, image: Any) -> bool:
    """Whether a ``.nii.gz`` file's gzip trailer records the length its header implies.

    The last four bytes of a gzip stream hold the uncompressed length modulo 2³²; a truncated file ends
    elsewhere in its compressed data instead, so this catches truncation without decompressing a
    whole-brain series twice.  Damage inside the stream is still found when the voxels are read (a CRC
    or zlib error, reported by :func:`_reading`), before any fitting.  False for other files.
    """
    if path.suffix != ".gz":
        return False
    offset = getattr(image.dataobj, "offset", None)
    if offset is None:
        return False
    expected = int(offset) + int(np.prod(image.shape)) * image.header.get_data_dtype().itemsize
    with open(path, "rb") as handle:
        handle.seek(-4, 2)
        recorded = int.from_bytes(handle.read(4), "little")
    return recorded == expected % 2**32


def load_dwi(path: str | PathLike) -> tuple[np.ndarray, np.ndarray, Any]:
    """Read a whole 4-D image as float32.

    Convenient for small images and notebooks; whole-brain pipelines use :func:`open_dwi` and
    :meth:`DWIImage.extract` so that only masked voxels are held in memory.

    Returns
    -------
    data : ndarray, shape (X, Y, Z, n_volumes), float32
    affine : ndarray, shape (4, 4)
    header : nibabel header
    """
    dwi = open_dwi(path)
    return dwi.volumes(0, dwi.n_volumes), dwi.affine, dwi.header


# ---------------------------------------------------------------------------------------------- protocol
def _read_table(path: Path, what: str) -> np.ndarray:
    try:
        return np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise InputError(f"{what} {path} is not a table of numbers ({err}); give an FSL-format text file.") from None


def load_protocol(
    bvals: str | PathLike, bvecs: str | PathLike, *, n_volumes: int | None = None, units: str = "s/mm2", **kwargs
) -> Protocol:
    """Read FSL ``bvals``/``bvecs`` files and check them against the number of image volumes.

    Parameters
    ----------
    bvals, bvecs : path
        FSL text files: one row of b-values (s/mm²), three rows of unit directions.
    n_volumes : int, optional
        Number of volumes of the image they belong to.
    units : {"s/mm2", "auto", "ms/um2", "s/m2"}
        Unit of the b-values.  FSL files hold s/mm², so b-values implausible in s/mm² (given in ms/µm²
        or s/m²) are refused with the fix (:meth:`Protocol.from_bvals_bvecs`).
    **kwargs
        Passed to :meth:`Protocol.from_bvals_bvecs` (``b0_threshold``...).

    Returns
    -------
    Protocol

    Raises
    ------
    FileNotFoundError, InputError, ProtocolError
        The message names the files, what is wrong and how to fix it.

    Notes
    -----
    The one reader of FSL tables; :meth:`Protocol.from_fsl` calls it.
    """
    bvals = check_input_file(bvals, "bvals file")
    bvecs = check_input_file(bvecs, "bvecs file")
    values = _read_table(bvals, "bvals file")
    vectors = _read_table(bvecs, "bvecs file")
    if 1 not in values.shape:
        raise InputError(
            f"bvals file {bvals} holds a {values.shape[0]}x{values.shape[1]} table; FSL bvals is one row "
            f"(or one column) of b-values."
        )
    n_bvals = values.size
    if n_volumes is not None and n_bvals != n_volumes:
        raise InputError(
            f"bvals file {bvals} lists {n_bvals} b-values but the image has {n_volumes} volumes; use the "
            f"bvals file written with this image (one value per volume)."
        )
    if vectors.shape not in ((3, n_bvals), (n_bvals, 3)):
        raise InputError(
            f"bvecs file {bvecs} holds a {vectors.shape[0]}x{vectors.shape[1]} table; it needs 3 rows of "
            f"{n_bvals} values (FSL format), one direction per b-value of {bvals}."
        )
    try:
        return Protocol.from_bvals_bvecs(values, vectors, units=units, **kwargs)
    except ProtocolError as err:
        message = str(err).replace("\n", " ")
        raise ProtocolError(f"{bvals} / {bvecs}: {message}") from None


# ---------------------------------------------------------------------------------------------- masks
def load_mask(path: str | PathLike, spatial_shape: tuple[int, ...], *, affine: np.ndarray | None = None) -> np.ndarray:
    """Read a mask image as booleans (value > 0) and check it against the image's spatial shape.

    A 4-D mask with one volume is accepted.  The mask is applied voxel by voxel; when ``affine`` (the
    DWI's) is given and the mask's differs, a warning says so.

    Raises
    ------
    FileNotFoundError, InputError
    """
    path = check_input_file(path, "mask")
    data = _load_volume(path, "mask", spatial_shape, affine, "or leave out --mask to compute one")
    mask = np.nan_to_num(data.astype(np.float32, copy=False), nan=0.0) > 0
    if not mask.any():
        raise InputError(f"mask {path} selects no voxel (no value > 0); give a mask that covers the brain.")
    return mask


def load_noise_map(
    path: str | PathLike, spatial_shape: tuple[int, ...], mask: np.ndarray, *, affine: np.ndarray | None = None
) -> np.ndarray:
    """Read a noise map (σ per voxel, raw signal units) and check it against the image and the mask.

    A 4-D map with one volume is accepted (MRtrix ``dwidenoise -noise`` and dipy write 3-D ones).

    Parameters
    ----------
    path : path
        NIfTI image in the DWI's voxel grid.
    spatial_shape : tuple of int
        The DWI's (X, Y, Z).
    mask : ndarray of bool, shape (X, Y, Z)
        The voxels to be mapped: the map must be finite and positive in each.
    affine : ndarray, shape (4, 4), optional
        The DWI's; a map with another one is applied voxel by voxel, with a warning.

    Returns
    -------
    ndarray, shape (X, Y, Z), float64

    Raises
    ------
    FileNotFoundError, InputError
        Naming the file, what is wrong (shape, how many mask voxels are not finite or not positive) and
        the fix.
    """
    path = check_input_file(path, "noise map")
    values = _load_volume(path, "noise map", spatial_shape, affine, "or leave out --noise-map to estimate one")
    values = values.astype(np.float64)
    inside = values[np.asarray(mask, dtype=bool)]
    n_nonfinite = int((~np.isfinite(inside)).sum())
    n_nonpositive = int((np.isfinite(inside) & (inside <= 0)).sum())
    if n_nonfinite or n_nonpositive:
        raise InputError(
            f"noise map {path} is not a positive noise level in every mask voxel ({n_nonfinite} NaN/Inf, "
            f"{n_nonpositive} <= 0 of {inside.size}); give a map of the noise standard deviation in signal "
            f"units that covers the mask, or leave out --noise-map to estimate one."
        )
    return values


def _load_volume(
    path: Path, what: str, spatial_shape: tuple[int, ...], affine: np.ndarray | None, alternative: str
) -> np.ndarray:
    """The data of a 3-D image (or 4-D with one volume) in the DWI's grid, in its stored type.

    ``alternative`` completes the fix of a shape error ("or leave out --mask to compute one").
    """
    image = _load_nifti(path, what)
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if shape != tuple(spatial_shape):
        raise InputError(
            f"{what} {path} has shape {shape} but the DWI volumes have {tuple(spatial_shape)}; give a {what} "
            f"in the same voxel grid as the DWI ({alternative})."
        )
    if affine is not None and not np.allclose(image.affine, affine, atol=1e-3):
        logger.warning("%s %s has another affine than the DWI; it is applied voxel by voxel, check that "
                       "it belongs to this scan", what, path)
    with _reading(path, what):
        return np.asanyarray(image.dataobj).reshape(shape)


def compute_mask(
    mean_b0: np.ndarray,
    *,
    mean_dw: np.ndarray | None = None,
    median_radius: int = 2,
    numpass: int = 1,
    background_ratio: float = 0.3,
    tissue_attenuation: float = 0.8,
) -> np.ndarray:
    """Brain mask from the mean b=0 image: dipy's ``median_otsu`` and filled holes.

    Otsu's threshold always splits the image in two; in a crop of the brain (no background) it splits
    bright CSF from tissue.  Two signs that what it left out is not background make the mask every voxel
    with a positive b=0 signal instead (with a warning): a bright outside, or, given ``mean_dw``, an
    outside whose signal diffusion weighting attenuates (background noise is as strong with diffusion
    weighting as without, tissue is not).

    Parameters
    ----------
    mean_b0 : ndarray, shape (X, Y, Z)
    mean_dw : ndarray, shape (X, Y, Z), optional
        Mean of some diffusion-weighted volumes (b >= 500 s/mm²: tissue keeps at most ~70 %).
    median_radius, numpass : int
        Median filter settings of ``median_otsu``; the radius is reduced for very small images.
    background_ratio : float
        No background if the median b=0 signal outside the Otsu mask exceeds this fraction of the
        median inside.
    tissue_attenuation : float
        No background if the median of ``mean_dw`` outside the Otsu mask is below this fraction of the
        median b=0 signal there.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
    """
    from dipy.segment.mask import median_otsu
    from scipy.ndimage import binary_fill_holes

    def finite(volume: np.ndarray) -> np.ndarray:
        return np.nan_to_num(np.asarray(volume, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)

    volume = finite(mean_b0)
    radius = max(1, min(median_radius, min(volume.shape) // 8))
    _, mask = median_otsu(volume, median_radius=radius, numpass=numpass)
    mask = np.asarray(binary_fill_holes(mask), dtype=bool)
    if mask.any() and not mask.all():
        inside, outside = float(np.median(volume[mask])), float(np.median(volume[~mask]))
        reason = None
        if outside > background_ratio * inside:
            reason = f"median b=0 outside the Otsu mask is {100 * outside / max(inside, 1e-12):.0f}% of inside"
        elif mean_dw is not None and outside > 0:
            attenuation = float(np.median(finite(mean_dw)[~mask])) / outside
            if attenuation < tissue_attenuation:
                reason = (f"diffusion weighting attenuates the signal outside the Otsu mask to "
                          f"{100 * attenuation:.0f}%, as in tissue; background noise keeps it")
        if reason:
            logger.warning("the image seems to have no background (%s): using every voxel with a positive b=0 "
                           "signal as the mask; give --mask to override", reason)
            mask = np.asarray(binary_fill_holes(volume > 0), dtype=bool)
    return mask


# ---------------------------------------------------------------------------------------------- maps
def extract_voxels(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Voxels of an in-memory 4-D array inside ``mask`` as float32 (n_voxels, n_volumes)."""
    return np.asarray(data[np.asarray(mask, dtype=bool)], dtype=np.float32)


def to_image_space(values: np.ndarray, mask: np.ndarray, *, fill: float = 0.0) -> np.ndarray:
    """Put per-voxel values back into the image grid.

    Parameters
    ----------
    values : ndarray, shape (n_voxels,) or (n_voxels, k)
        In the order of ``np.nonzero(mask)``; NaN/Inf become ``fill``.
    mask : ndarray of bool, shape (X, Y, Z)

    Returns
    -------
    ndarray, shape (X, Y, Z) or (X, Y, Z, k), float32
        ``fill`` outside the mask.
    """
    values = np.asarray(values)
    out = np.full(mask.shape + values.shape[1:], fill, dtype=np.float32)
    out[mask] = np.nan_to_num(values.astype(np.float32, copy=False), nan=fill, posinf=fill, neginf=fill)
    return out


def save_map(array: np.ndarray, path: str | PathLike, affine: np.ndarray, header: Any) -> Path:
    """Write a 3-D or 4-D map as float32 NIfTI with the reference image's spatial header.

    The affine, the sform and qform (with their codes), voxel sizes and units are copied; the data
    type becomes float32 and the intensity scaling is dropped.
    """
    import nibabel as nib

    array = np.asarray(array, dtype=np.float32)
    new_header = nib.Nifti1Header()
    if header is not None:
        new_header.set_xyzt_units(*header.get_xyzt_units())
        if hasattr(header, "get_dim_info"):
            try:
                new_header.set_dim_info(*header.get_dim_info())
            except Exception:  # dim_info is optional metadata
                pass
    image = nib.Nifti1Image(array, affine, new_header)
    if header is not None and hasattr(header, "get_sform"):
        sform, sform_code = header.get_sform(coded=True)
        qform, qform_code = header.get_qform(coded=True)
        image.set_sform(affine if sform is None else sform, int(sform_code))
        image.set_qform(affine if qform is None else qform, int(qform_code))
        image.header.set_zooms(tuple(header.get_zooms()[:3]) + tuple(image.header.get_zooms()[3:]))
    image.set_data_dtype(np.float32)
    image.header["scl_slope"] = np.nan
    image.header["scl_inter"] = np.nan
    path = Path(path)
    nib.save(image, path)
    return path


def save_json(data: dict, path: str | PathLike) -> Path:
    """Write ``data`` as indented UTF-8 JSON (numpy values as Python, non-finite floats as null)."""
    from .provenance import jsonable

    path = Path(path)
    path.write_text(json.dumps(jsonable(data), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- checkpoints
#: Keys every varmap checkpoint holds.
_CHECKPOINT_KEYS = frozenset({"model", "protocol", "state"})


def save_checkpoint(checkpoint: dict, path: str | PathLike) -> Path:
    """Write a checkpoint (``model``, ``protocol``, estimator ``state``...) with ``torch.save``."""
    import torch

    path = Path(path)
    torch.save(checkpoint, path)
    return path


def load_checkpoint(path: str | PathLike, *, device: Any = None) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, its tensors onto ``device``.

    Parameters
    ----------
    path : path
    device : torch.device or str, optional
        ``map_location`` of the tensors; default where they were saved.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    InputError
        If it cannot be read, or is not a varmap checkpoint.
    """
    import torch

    path = check_input_file(path, "checkpoint")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # pickle, zip and torch errors alike
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"checkpoint {path} cannot be read ({message}); give a model.pt written by varmap fit.") from None
    if not isinstance(checkpoint, dict) or not _CHECKPOINT_KEYS <= set(checkpoint):
        raise InputError(f"checkpoint {path} is not a varmap checkpoint (no model/protocol/state); give the "
                         f"model.pt written by varmap fit.")
    return checkpoint


# ---------------------------------------------------------------------------------------------- output
def check_output_dir(output_dir: str | PathLike, *, force: bool) -> Path:
    """Refuse an existing output folder unless ``force``; returns the path.

    Raises
    ------
    FileExistsError
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not force:
        raise FileExistsError(
            f"output folder {output_dir} already exists; pass --force (force=True) to replace it, or "
            f"choose another -o."
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"output path {output_dir} exists and is not a folder; choose another -o.")
    return output_dir


@contextmanager
def atomic_output_dir(output_dir: str | PathLike, *, force: bool = False) -> Iterator[Path]:
    """Write into a temporary folder beside ``output_dir`` and move it into place on success.

    On an exception (KeyboardInterrupt included) the temporary folder is removed and ``output_dir`` is
    left as it was.  With ``force``, an existing ``output_dir`` is moved aside, replaced, then removed.

    Yields
    ------
    Path
        The temporary folder to write into.
    """
    output_dir = check_output_dir(output_dir, force=force)
    parent = output_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o777 & ~umask)  # mkdtemp makes it private; give the usual permissions
    try:
        yield temporary
        # re-check: another process may have created the folder meanwhile
        check_output_dir(output_dir, force=force)
        old = None
        if output_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=parent))
            os.rename(output_dir, old / output_dir.name)
        os.rename(temporary, output_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------- phantom
# Writing a simulated phantom (varmap.phantom.write_phantom hands its content over).
__all__ += ["save_mni_image", "write_phantom_dataset"]


def save_mni_image(array: np.ndarray, path: str | PathLike, affine: np.ndarray) -> Path:
    """Write an image on an MNI152 grid as NIfTI, in the array's own data type.

    Parameters
    ----------
    array : ndarray, shape (X, Y, Z) or (X, Y, Z, N)
        Image in the data type it is stored in (float32, uint8, ...).
    path : path
        ``.nii`` or ``.nii.gz`` file to write.
    affine : ndarray, shape (4, 4)
        Voxel-to-MNI (mm) transform; written as both sform and qform with code ``"mni"``, units mm.

    Returns
    -------
    Path
    """
    import nibabel as nib

    array = np.asarray(array)
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_sform(affine, code="mni")
    image.set_qform(affine, code="mni")
    image.set_data_dtype(array.dtype)
    path = Path(path)
    nib.save(image, path)
    return path


def write_phantom_dataset(
    output_dir: str | PathLike,
    *,
    dwi: np.ndarray,
    protocol: Protocol,
    affine: np.ndarray,
    images: dict[str, np.ndarray],
    texts: dict[str, str],
    force: bool = False,
) -> list[Path]:
    """Write a simulated acquisition and its companion files atomically (:func:`atomic_output_dir`).

    Parameters
    ----------
    output_dir : path
        Folder to create.
    dwi : ndarray, shape (X, Y, Z, N)
        Diffusion-weighted series, written as float32 ``dwi.nii.gz``.
    protocol : Protocol
        Written as FSL ``dwi.bval`` (s/mm², one row; integers when they all are) and ``dwi.bvec``
        (three rows).
    affine : ndarray, shape (4, 4)
        Voxel-to-MNI (mm) transform of every image (:func:`save_mni_image`).
    images : dict of ndarray
        Further images by path relative to ``output_dir`` (``"truth/D.nii.gz"``), each in the data
        type it is stored in; written in this order, folders created as needed.
    texts : dict of str
        Text files by relative path, written last.
    force : bool
        Replace an existing ``output_dir``.

    Returns
    -------
    list of Path
        The files written, under ``output_dir``: ``dwi.nii.gz``, ``dwi.bval``, ``dwi.bvec``, then
        ``images`` and ``texts`` in their order.

    Raises
    ------
    FileExistsError
        If ``output_dir`` exists and ``force`` is false.
    """
    output_dir = Path(output_dir)
    names = ["dwi.nii.gz", "dwi.bval", "dwi.bvec", *images, *texts]
    with atomic_output_dir(output_dir, force=force) as staging:
        save_mni_image(np.asarray(dwi, dtype=np.float32), staging / "dwi.nii.gz", affine)
        bvals = protocol.bvals * 1000.0
        integer = np.allclose(bvals, np.round(bvals), atol=1e-6)
        np.savetxt(staging / "dwi.bval", bvals[None], fmt="%d" if integer else "%.6g")
        np.savetxt(staging / "dwi.bvec", protocol.bvecs.T, fmt="%.8f")
        for name, array in images.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            save_mni_image(array, staging / name, affine)
        for name, text in texts.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(text)
    return [output_dir / name for name in names]
