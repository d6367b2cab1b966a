"""Whole-image mapping: NIfTI in; parameter, uncertainty and tissue-cluster maps out.

:func:`fit_image` is what ``varmap fit`` runs and :func:`apply_checkpoint` what ``varmap apply`` runs,
so notebooks need no command line.  Both go through one pipeline (:mod:`.run`): check every input,
decide the mask, read the masked voxels, ``estimator.fit`` or ``.transform``, maps in image space,
files.  Each step is a module of its own:

``scan``        the checked input files, the brain mask and the masked voxels' signals
``checks``      the method's options and the device, checked before any heavy work
``noise``       the noise level of a run: given, read from a noise map, or a map estimated from the scan
``noise_maps``  the estimators of a noise map (b=0 repeats, pseudo-residuals, dipy's local PCA, one value)
``maps``        per-voxel results back into image space, with the goodness of fit
``checkpoint``  what ``model.pt`` holds, and the estimator rebuilt from it
``outputs``     every output file, written atomically through :mod:`varmap.io`
``result``      :class:`ImageFitResult`
"""

from .noise_maps import estimate_noise_map
from .result import ImageFitResult
from .run import apply_checkpoint, fit_image

__all__ = ["ImageFitResult", "fit_image", "apply_checkpoint", "estimate_noise_map"]
