"""A digital brain phantom with known ground truth, built from the MNI152 tissue probability maps.

The geometry comes from the grey-matter, white-matter and brain-mask templates that nilearn ships
inside its package (no download).  Every tissue gets its own smoothly varying parameter maps, every
voxel mixes the signals of the tissues it contains, and Rician noise makes the result look like an
acquisition: :func:`make_phantom` builds it in memory, :func:`write_phantom` writes it as NIfTI +
FSL bvals/bvecs with the ground truth beside it (through :mod:`varmap.io`).  Nothing here plots.

Modules
-------
tissues
    The tissues (:data:`TISSUES`), their S0 and parameter values, and their parameter maps.
fields
    Smooth random fields (:func:`smooth_random_field`) for parameters, S0 and fibre orientation.
geometry
    MNI152 templates resampled (:func:`load_tissue_templates`), cropped, turned into fractions.
synthesis
    :func:`make_phantom`: fields, tissue values, mixed signals and noise.
data
    :class:`Phantom`, the result.
labels
    Groups for evaluation: :func:`tissue_groups`, :func:`boundary_distance`.
export
    The images and README of a written phantom, and :func:`write_phantom`.
"""

from .data import Phantom
from .export import write_phantom
from .fields import smooth_random_field
from .geometry import load_tissue_templates
from .labels import PARTIAL_VOLUME, boundary_distance, tissue_groups
from .synthesis import make_phantom
from .tissues import TISSUE_NAMES, TISSUE_PARAMETERS, TISSUE_S0, TISSUES

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
