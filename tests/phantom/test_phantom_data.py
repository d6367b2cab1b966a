"""The phantom read as an image (:meth:`Phantom.dwi_image`)."""

from __future__ import annotations

import numpy as np

from varmap.phantom import make_phantom


def test_a_phantom_without_its_image_reads_as_the_one_with_it() -> None:
    """Built with ``image=False``, the phantom's image gives the same brain voxels, zero elsewhere, whichever
    way the pipeline reads it (slabs of volumes, one value, the brain's signals)."""
    settings = dict(model="msdki", voxel_size=8.0, snr=10.0, seed=3)  # the whole head: background around the brain
    with_image, bare = make_phantom(**settings), make_phantom(**settings, image=False)
    full, lazy = with_image.dwi_image(), bare.dwi_image()
    assert lazy.shape == full.shape == (*bare.shape, bare.protocol.n_measurements)
    mask = bare.mask
    assert (~mask).any()
    slab = lazy.volumes(3, 9)
    np.testing.assert_array_equal(slab[mask], full.volumes(3, 9)[mask])
    assert slab.shape == (*bare.shape, 6) and not slab[~mask].any()
    x, y, z = (int(i[0]) for i in np.nonzero(mask))
    assert lazy.image.dataobj[x, y, z, 5] == bare.signals[0, 5]
    np.testing.assert_array_equal(lazy.extract(mask), with_image.signals)
    assert str(lazy.path) == "phantom"
