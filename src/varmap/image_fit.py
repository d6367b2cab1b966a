"""Whole-image fitting: NIfTI in; parameter, uncertainty and tissue-cluster maps out.

:func:`fit_image` is what ``varmap fit`` runs and :func:`apply_checkpoint` what ``varmap apply``
runs, so notebooks need no command line.  The flow is one way: files → :mod:`varmap.io` (the masked
voxels as an ``(n_voxels, n_volumes)`` float32 matrix) → estimator → maps → files.  Every input is
checked before any heavy work, and outputs are written atomically.
"""

from __future__ import annotations

import datetime
import inspect
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .io import (
    DWIImage,
    InputError,
    atomic_output_dir,
    check_input_file,
    check_output_dir,
    compute_mask,
    load_mask,
    load_protocol,
    open_dwi,
    save_map,
    sha256sum,
    to_image_space,
)
from .protocol import Protocol
from .results import FitResult

__all__ = ["ImageFitResult", "fit_image", "apply_checkpoint", "estimate_sigma_from_image", "DEVICES"]

logger = logging.getLogger("varmap")

#: Accepted values of ``device``.
DEVICES = ("auto", "cpu", "cuda")

#: File names of the fixed outputs.
CHECKPOINT_NAME = "model.pt"
SIDECAR_NAME = "fit.json"
FIGURE_NAME = "overview.png"

#: Memory (bytes) that the nlls Jacobians may take when ``chunk_size`` is not given.
_NLLS_MEMORY = 1.5e9
#: Voxels per chunk when computing the goodness of fit.
_GOF_CHUNK = 65_536


@dataclass
class ImageFitResult:
    """Maps of a whole-image fit, in image space.

    Attributes
    ----------
    maps : dict of ndarray
        float32 arrays of shape (X, Y, Z) -- or (X, Y, Z, k) for ``n`` and ``cluster_probs`` -- keyed
        by output name (the file name without ``.nii.gz``); 0 outside the mask and in excluded voxels.
    units : dict of str
        Unit of every map.
    mask : ndarray of bool, shape (X, Y, Z)
        The mask used.
    affine : ndarray, shape (4, 4)
    header : nibabel header
        Header of the input image.
    fit : FitResult
        The per-voxel result (voxels in ``np.nonzero(mask)`` order).
    estimator : Estimator
        The fitted estimator (``transform`` maps new scans of the same protocol).
    metadata : dict
        What ``fit.json`` holds.
    output_dir : Path or None
    files : dict of Path
        Written files keyed by output name.
    """

    maps: dict[str, np.ndarray]
    units: dict[str, str]
    mask: np.ndarray
    affine: np.ndarray
    header: Any
    fit: FitResult
    estimator: Any
    metadata: dict
    output_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def n_voxels(self) -> int:
        """Voxels in the mask."""
        return int(self.mask.sum())

    @property
    def n_excluded(self) -> int:
        """Voxels in the mask that were not fitted (NaN/Inf signals or a non-positive b=0 signal)."""
        return int((~self.fit.valid).sum())


# ---------------------------------------------------------------------------------------------- API
def fit_image(
    dwi: str | PathLike,
    bvals: str | PathLike,
    bvecs: str | PathLike,
    *,
    mask: str | PathLike | None = None,
    model: str = "msdki",
    method: str = "gmvae",
    output_dir: str | PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
    figure: bool = True,
    command: str | None = None,
    **options,
) -> ImageFitResult:
    """Fit a signal model to every voxel of a 4-D diffusion image and write the maps.

    Parameters
    ----------
    dwi : path
        4-D NIfTI image (.nii or .nii.gz).
    bvals, bvecs : path
        FSL text files (b-values in s/mm², directions as three rows).
    mask : path, optional
        Brain mask in the DWI's voxel grid (values > 0 are in).  Default: computed with dipy's
        ``median_otsu`` on the mean b=0 image (holes filled) and saved as ``mask.nii.gz``.
    model : {"msdki", "ball_stick"}
    method : {"nlls", "selfsup", "vae", "gmvae"}
    output_dir : path, optional
        Folder for the maps, ``fit.json``, ``model.pt`` and ``overview.png``; written atomically.
        ``None`` writes nothing.
    seed : int
        Seed of every random draw.
    device : {"auto", "cpu", "cuda"}
        ``"auto"``: the GPU when one is present.
    force : bool
        Replace an existing ``output_dir``.
    progress : bool
        tqdm bars for reading, training and inference.
    figure : bool
        Draw ``overview.png``.
    command : str, optional
        The command line recorded in ``fit.json`` (the CLI passes its own); default the Python call.
    **options
        Estimator options (``n_epochs``, ``batch_size``, ``learning_rate``, ``n_components``,
        ``likelihood``, ``sigma`` in raw signal units, ``n_posterior_samples``...).  Only these are
        passed, so the estimator's defaults rule the rest.

    Returns
    -------
    ImageFitResult

    Raises
    ------
    FileNotFoundError, FileExistsError, InputError, ProtocolError, ValueError
        On bad input, before any heavy work; nothing is written.

    Notes
    -----
    With fewer than two b=0 volumes and no ``sigma``, the noise level is estimated from the b=0
    image(s) by pseudo-residuals (see :func:`estimate_sigma_from_image`).  For ``nlls`` without a
    ``chunk_size``, the chunk is chosen so that its Jacobians take about 1.5 GB.
    """
    started = time.perf_counter()
    if command is None:
        command = _python_call("fit_image", dwi, bvals, bvecs, mask=mask, model=model, method=method,
                               output_dir=output_dir, seed=seed, device=device, **options)
    # ---- every check before any heavy work
    if output_dir is not None:
        check_output_dir(output_dir, force=force)
    torch_device = _resolve_device(device)
    image = open_dwi(dwi)
    protocol = load_protocol(bvals, bvecs, n_volumes=image.n_volumes)
    from .signal_models import get_signal_model

    signal_model = get_signal_model(model, protocol)
    options = dict(options)
    _build_estimator(method, signal_model, seed=seed, device=torch_device, progress=progress, options=options)
    mask_array = None if mask is None else load_mask(mask, image.spatial_shape, affine=image.affine)
    checked = time.perf_counter()
    logger.info("fitting %s with %s on %s (%s), device %s", model, method, image.path.name,
                "x".join(map(str, image.shape)), torch_device)

    # ---- data
    inputs = _read_inputs(image, protocol, mask_array, progress=progress)
    sigma_source = "given (--sigma)" if options.get("sigma") is not None else "estimated by the estimator"
    if options.get("sigma") is None and protocol.n_b0 < 2:
        sigma = estimate_sigma_from_image(image, protocol, inputs.mask)
        options["sigma"] = sigma
        sigma_source = "estimated from the b=0 image (pseudo-residuals)"
        logger.info("only %d b=0 volume: noise level estimated from the image, sigma = %.4g", protocol.n_b0, sigma)
    if method == "nlls" and "chunk_size" not in options:
        options["chunk_size"] = _nlls_chunk_size(signal_model)
    estimator = _build_estimator(method, signal_model, seed=seed, device=torch_device, progress=progress,
                                 options=options)

    # ---- fit
    fitted = time.perf_counter()
    fit = estimator.fit(inputs.signals)
    fit_seconds = time.perf_counter() - fitted
    logger.info("fitted %d voxels in %.1f s", int(fit.valid.sum()), fit_seconds)

    config = {
        "model": model,
        "method": method,
        "seed": seed,
        "device": str(torch_device),
        "options": _jsonable(options),
        "estimator": _jsonable(fit.config),
        "mask": "given" if mask is not None else "computed: dipy median_otsu on the mean b=0 image, holes filled",
        "sigma": fit.sigma,
        "sigma_source": sigma_source,
        "torch_threads": _torch_threads(),
    }
    input_files = {"dwi": image.path, "bvals": Path(bvals), "bvecs": Path(bvecs)}
    if mask is not None:
        input_files["mask"] = Path(mask)
    state = {"varmap_version": __version__, "model": model, "protocol": protocol.to_dict(),
             "state": estimator.get_state()}
    return _finish(
        image, protocol, inputs, fit, estimator,
        kind="fit", command=command, config=config, input_files=input_files, output_dir=output_dir,
        force=force, figure=figure, checkpoint_state=state,
        timings={"check_s": checked - started, **inputs.timings, "fit_s": fit_seconds,
                 **{f"fit_{stage}": seconds for stage, seconds in fit.timings.items()}},
        started=started,
    )


def apply_checkpoint(
    checkpoint: str | PathLike,
    dwi: str | PathLike,
    bvals: str | PathLike,
    bvecs: str | PathLike,
    *,
    mask: str | PathLike | None = None,
    output_dir: str | PathLike | None = None,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
    figure: bool = True,
    command: str | None = None,
) -> ImageFitResult:
    """Map a new scan with a trained checkpoint (``model.pt`` of :func:`fit_image`), without training.

    The scan must have the protocol of the checkpoint (same b-values and directions, in order).
    Parameters and outputs are those of :func:`fit_image`, without ``model.pt``; ``fit.json`` names the
    checkpoint and its checksum.

    Raises
    ------
    FileNotFoundError, FileExistsError, InputError, ProtocolError
        Including a checkpoint that is not varmap's or a scan of another protocol.
    """
    started = time.perf_counter()
    if command is None:
        command = _python_call("apply_checkpoint", checkpoint, dwi, bvals, bvecs, mask=mask,
                               output_dir=output_dir, device=device)
    if output_dir is not None:
        check_output_dir(output_dir, force=force)
    torch_device = _resolve_device(device)
    checkpoint = check_input_file(checkpoint, "checkpoint")
    image = open_dwi(dwi)
    protocol = load_protocol(bvals, bvecs, n_volumes=image.n_volumes)
    saved = _load_checkpoint(checkpoint, torch_device)
    saved_protocol = Protocol.from_dict(saved["protocol"])
    if protocol != saved_protocol:
        raise InputError(
            f"the scan's protocol ({protocol!r}, from {bvals} / {bvecs}) differs from the one the "
            f"checkpoint {checkpoint} was trained on ({saved_protocol!r}); apply a checkpoint only to "
            f"scans of the same protocol, or fit this scan with varmap fit."
        )
    from .estimators import ESTIMATORS
    from .signal_models import get_signal_model

    signal_model = get_signal_model(saved["model"], protocol)
    state = saved["state"]
    estimator = ESTIMATORS[state["method"]].from_state(signal_model, state, device=torch_device)
    estimator.progress = progress
    mask_array = None if mask is None else load_mask(mask, image.spatial_shape, affine=image.affine)
    checked = time.perf_counter()
    logger.info("applying %s checkpoint (%s, %s) to %s, device %s", state["method"], saved["model"],
                checkpoint.name, image.path.name, torch_device)

    inputs = _read_inputs(image, protocol, mask_array, progress=progress)
    t0 = time.perf_counter()
    fit = estimator.transform(inputs.signals)
    fit_seconds = time.perf_counter() - t0
    config = {
        "model": saved["model"],
        "method": state["method"],
        "seed": fit.seed,
        "device": str(torch_device),
        "checkpoint": str(checkpoint),
        "checkpoint_varmap_version": saved.get("varmap_version"),
        "estimator": _jsonable(fit.config),
        "mask": "given" if mask is not None else "computed: dipy median_otsu on the mean b=0 image, holes filled",
        "sigma": fit.sigma,
        "sigma_source": "checkpoint",
        "torch_threads": _torch_threads(),
    }
    input_files = {"checkpoint": checkpoint, "dwi": image.path, "bvals": Path(bvals), "bvecs": Path(bvecs)}
    if mask is not None:
        input_files["mask"] = Path(mask)
    return _finish(
        image, protocol, inputs, fit, estimator,
        kind="apply", command=command, config=config, input_files=input_files, output_dir=output_dir,
        force=force, figure=figure, checkpoint_state=None,
        timings={"check_s": checked - started, **inputs.timings, "fit_s": fit_seconds,
                 **{f"fit_{stage}": seconds for stage, seconds in fit.timings.items()}},
        started=started,
    )


def estimate_sigma_from_image(image: DWIImage, protocol: Protocol, mask: np.ndarray) -> float:
    """Noise standard deviation from the b=0 volume(s) by pseudo-residuals.

    In every mask voxel whose six face neighbours are in the mask too, the pseudo-residual
    ``ε = √(6/7) (s − mean of the 6 neighbours)`` has the noise variance where the anatomy is locally
    linear; σ is the robust spread ``1.4826 · MAD(ε)``, the median over the b=0 volumes.

    References
    ----------
    Coupé P et al. (2008) An optimized blockwise nonlocal means denoising filter for 3-D magnetic
    resonance images. IEEE Trans. Med. Imaging 27:425-441.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    kernel = np.zeros((3, 3, 3))
    kernel[[0, 2, 1, 1, 1, 1], [1, 1, 0, 2, 1, 1], [1, 1, 1, 1, 0, 2]] = 1.0
    inner = ndimage.binary_erosion(mask, structure=kernel.astype(bool) | _centre())
    if inner.sum() < 20:
        inner = mask
    sigmas = []
    for index in np.flatnonzero(protocol.b0_mask):
        volume = np.nan_to_num(image.volumes(int(index), int(index) + 1)[..., 0].astype(np.float64))
        neighbours = ndimage.convolve(volume, kernel, mode="nearest") / 6.0
        residual = math.sqrt(6.0 / 7.0) * (volume - neighbours)[inner]
        sigmas.append(1.4826 * float(np.median(np.abs(residual - np.median(residual)))))
    sigma = float(np.median(sigmas))
    if not np.isfinite(sigma) or sigma <= 0:
        raise InputError(
            "cannot estimate the noise level from the image (one b=0 volume, no spread in the mask); "
            "pass --sigma (noise standard deviation in signal units)."
        )
    return sigma


# ---------------------------------------------------------------------------------------------- steps
@dataclass
class _Inputs:
    mask: np.ndarray
    mask_computed: bool
    signals: np.ndarray
    n_nonfinite: int
    n_nonpositive_b0: int
    timings: dict[str, float]


def _read_inputs(image: DWIImage, protocol: Protocol, mask: np.ndarray | None, *, progress: bool) -> _Inputs:
    """Mask (given or computed) and the masked voxels' signals, with counts of unusable voxels."""
    t0 = time.perf_counter()
    computed = mask is None
    if computed:
        mean_b0 = image.mean_volume(np.flatnonzero(protocol.b0_mask))
        mask = compute_mask(mean_b0)
        if not mask.any():
            raise InputError(
                f"the brain mask computed from the mean b=0 image of {image.path} is empty; give a mask "
                f"with --mask."
            )
        logger.info("no mask given: computed one with median_otsu on the mean b=0 image (%d voxels); "
                    "it is saved as mask.nii.gz", int(mask.sum()))
    t1 = time.perf_counter()
    signals = image.extract(mask, progress=progress)
    t2 = time.perf_counter()
    finite = np.isfinite(signals).all(axis=1)
    b0 = signals[:, protocol.b0_mask].mean(axis=1, dtype=np.float64)
    n_nonfinite = int((~finite).sum())
    n_nonpositive = int((finite & ~(b0 > 0)).sum())
    if n_nonfinite or n_nonpositive:
        logger.warning(
            "%d of %d mask voxels are excluded from the fit (%d with NaN/Inf values, %d with a b=0 signal "
            "<= 0); they are 0 in the maps", n_nonfinite + n_nonpositive, mask.sum(), n_nonfinite, n_nonpositive)
    if n_nonfinite + n_nonpositive == signals.shape[0]:
        raise InputError(
            f"no voxel of the mask has finite signals and a positive b=0 signal in {image.path}; check "
            f"the image and the mask."
        )
    logger.info("read %d voxels x %d volumes (%.0f MB float32)", *signals.shape, signals.nbytes / 2**20)
    return _Inputs(mask, computed, signals, n_nonfinite, n_nonpositive,
                   {"mask_s": t1 - t0, "read_s": t2 - t1})


def _finish(
    image: DWIImage,
    protocol: Protocol,
    inputs: _Inputs,
    fit: FitResult,
    estimator: Any,
    *,
    kind: str,
    command: str,
    config: dict,
    input_files: dict[str, Path],
    output_dir: str | PathLike | None,
    force: bool,
    figure: bool,
    checkpoint_state: dict | None,
    timings: dict[str, float],
    started: float,
) -> ImageFitResult:
    """Maps in image space, goodness of fit, and (with ``output_dir``) every file, fit.json last."""
    t0 = time.perf_counter()
    maps, units = _image_maps(fit, inputs)
    timings["maps_s"] = time.perf_counter() - t0
    metadata = {
        "varmap_version": __version__,
        "kind": kind,
        "command": command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "seed": config.get("seed"),
        "inputs": {},
        "image": {
            "shape": list(image.shape),
            "voxel_size_mm": list(image.zooms),
            "affine": np.asarray(image.affine).round(8).tolist(),
        },
        "protocol": {
            "n_measurements": protocol.n_measurements,
            "n_b0": protocol.n_b0,
            "shells_s_per_mm2": (protocol.dw_shell_bvals * 1000).round(1).tolist(),
        },
        "voxels": {
            "in_mask": int(inputs.mask.sum()),
            "fitted": int(fit.valid.sum()),
            "excluded": int((~fit.valid).sum()),
            "excluded_nonfinite": inputs.n_nonfinite,
            "excluded_nonpositive_b0": inputs.n_nonpositive_b0,
        },
        "mask_computed": inputs.mask_computed,
        "units": units,
        "outputs": {},
        "timings": timings,
        "history": _jsonable(fit.history),
        "environment": _environment(),
    }
    result = ImageFitResult(maps=maps, units=units, mask=inputs.mask, affine=image.affine, header=image.header,
                            fit=fit, estimator=estimator, metadata=metadata)
    if output_dir is None:
        timings["total_s"] = time.perf_counter() - started
        return result

    t0 = time.perf_counter()
    for name, path in input_files.items():
        metadata["inputs"][name] = {"path": str(Path(path).absolute()), "sha256": sha256sum(path)}
    timings["checksum_s"] = time.perf_counter() - t0
    output_dir = Path(output_dir)
    with atomic_output_dir(output_dir, force=force) as temporary:
        t0 = time.perf_counter()
        for name, array in maps.items():
            save_map(array, temporary / f"{name}.nii.gz", image.affine, image.header)
            result.files[name] = output_dir / f"{name}.nii.gz"
        if checkpoint_state is not None:
            import torch

            torch.save(checkpoint_state, temporary / CHECKPOINT_NAME)
            result.files["checkpoint"] = output_dir / CHECKPOINT_NAME
        timings["write_s"] = time.perf_counter() - t0
        if figure:
            t0 = time.perf_counter()
            _overview(maps, units, inputs.mask, image, temporary / FIGURE_NAME, title=f"{config['model']} / "
                      f"{config['method']} -- {image.path.name}")
            result.files["figure"] = output_dir / FIGURE_NAME
            timings["figure_s"] = time.perf_counter() - t0
        metadata["outputs"] = {name: path.name for name, path in result.files.items()}
        timings["total_s"] = time.perf_counter() - started
        (temporary / SIDECAR_NAME).write_text(json.dumps(_jsonable(metadata), indent=2, ensure_ascii=False) + "\n")
        result.files["sidecar"] = output_dir / SIDECAR_NAME
    result.output_dir = output_dir
    voxels = metadata["voxels"]
    excluded = f" ({voxels['excluded']} excluded)" if voxels["excluded"] else ""
    logger.info("%s done: %s/%s, %d voxels%s, %.1f s; outputs in %s", kind, config["model"], config["method"],
                voxels["fitted"], excluded, timings["total_s"], output_dir)
    return result


def _image_maps(fit: FitResult, inputs: _Inputs) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    mask = inputs.mask
    model = fit.model
    maps: dict[str, np.ndarray] = {}
    units: dict[str, str] = {}
    model_units = model.units()
    for name, values in fit.params.items():
        maps[name] = to_image_space(values, mask)
        units[name] = model_units.get(name, "")
    maps["S0"] = to_image_space(fit.S0, mask)
    units["S0"] = "a.u. (input intensity)"
    if fit.std is not None:
        for name, values in fit.std.items():
            maps[f"{name}_std"] = to_image_space(values, mask)
            units[f"{name}_std"] = "degrees" if name == "n" else model_units.get(name, "")
    if fit.cluster_probs is not None:
        maps["cluster_probs"] = to_image_space(fit.cluster_probs, mask)
        units["cluster_probs"] = "probability"
        labels = fit.clusters
        maps["clusters"] = to_image_space(np.where(labels >= 0, labels + 1, 0), mask)
        units["clusters"] = "label (component k is k+1; 0 outside the mask or not fitted)"
    maps["rmse"] = to_image_space(_goodness_of_fit(fit, inputs.signals), mask)
    units["rmse"] = "1 (RMSE of predicted vs measured S/S0)"
    maps["mask"] = mask.astype(np.float32)
    units["mask"] = "1 (1 = in the mask)"
    return maps, units


def _goodness_of_fit(fit: FitResult, signals: np.ndarray) -> np.ndarray:
    """:meth:`FitResult.goodness_of_fit` in chunks of voxels (the full prediction would be float64)."""
    out = np.full(fit.n_voxels, np.nan)
    for start in range(0, fit.n_voxels, _GOF_CHUNK):
        part = slice(start, start + _GOF_CHUNK)
        valid = fit.valid[part]
        if not valid.any():
            continue
        chunk = FitResult(
            model=fit.model, method=fit.method, params={k: v[part] for k, v in fit.params.items()},
            S0=fit.S0[part], valid=valid, sigma=fit.sigma,
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            out[part] = chunk.goodness_of_fit(signals[part])
    return out


def _overview(maps: dict, units: dict, mask: np.ndarray, image: DWIImage, path: Path, *, title: str) -> None:
    from .plots import overview_figure

    shown = {name: array for name, array in maps.items() if name not in ("mask", "cluster_probs", "clusters")}
    overview_figure(shown, units, path, clusters=maps.get("clusters"), mask=mask, zooms=image.zooms, title=title)


# ---------------------------------------------------------------------------------------------- helpers
def _resolve_device(device: str | None):
    import torch

    if device is None:
        device = "auto"
    name = str(device)
    if name not in DEVICES and not name.startswith("cuda:"):
        raise InputError(f"device {device!r} is not known; use one of {list(DEVICES)}.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} was asked for but torch finds no CUDA GPU; use --device cpu or auto.")
    return torch.device(name)


def _accepted_options(estimator_class: type) -> set[str]:
    """Keyword arguments the estimator's constructors accept (following ``**kwargs`` up the MRO)."""
    names: set[str] = set()
    for cls in estimator_class.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        names.update(p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    names.discard("self")
    names.discard("model")
    return names


def _build_estimator(method: str, signal_model: Any, *, seed: int, device: Any, progress: bool, options: dict):
    from .estimators import ESTIMATORS, get_estimator

    if method not in ESTIMATORS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(ESTIMATORS)}.")
    accepted = _accepted_options(ESTIMATORS[method]) - {"seed", "device", "progress"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        shown = ", ".join(f"--{name.replace('_', '-')}" for name in unknown)
        raise InputError(
            f"option(s) {shown} do not apply to method {method}; its options are "
            f"{', '.join(sorted(accepted))}."
        )
    return get_estimator(method, signal_model, seed=seed, device=device, progress=progress, **options)


def _nlls_chunk_size(signal_model: Any) -> int:
    per_voxel = 70 * signal_model.n_observables * (signal_model.n_packed + 1)
    return int(max(1_000, min(50_000, _NLLS_MEMORY // per_voxel)))


def _load_checkpoint(path: Path, device: Any) -> dict:
    import torch

    try:
        saved = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"checkpoint {path} cannot be read ({message}); give a model.pt written by varmap fit.") from None
    if not isinstance(saved, dict) or not {"model", "protocol", "state"} <= set(saved):
        raise InputError(f"checkpoint {path} is not a varmap checkpoint (no model/protocol/state); give the "
                         f"model.pt written by varmap fit.")
    return saved


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _environment() -> dict:
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _python_call(function: str, *args, **kwargs) -> str:
    parts = [repr(str(a)) for a in args]
    parts += [f"{k}={str(v) if isinstance(v, PathLike) else v!r}" for k, v in kwargs.items() if v is not None]
    return f"varmap.{function}({', '.join(parts)})"


def _centre() -> np.ndarray:
    centre = np.zeros((3, 3, 3), dtype=bool)
    centre[1, 1, 1] = True
    return centre


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays to Python, non-finite floats to None, paths to str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (str, type(None))):
        return value
    if isinstance(value, PathLike):
        return str(value)
    return str(value)

