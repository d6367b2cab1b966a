"""Phantoms shared by the phantom tests: two small crops at 2 mm, built once per session."""

from __future__ import annotations

import pytest

from varmap.phantom import Phantom, make_phantom

#: Voxels at 2 mm around the brain centre: deep WM, ventricles, thalamus, partial volume.
CROP = (20, 20, 10)


@pytest.fixture(scope="session")
def phantom_crop() -> tuple[int, int, int]:
    """Size of the shared phantoms' crop, voxels."""
    return CROP


@pytest.fixture(scope="session")
def msdki_phantom() -> Phantom:
    """MS-DKI phantom, SNR 10, seed 3."""
    return make_phantom(model="msdki", voxel_size=2.0, snr=10.0, seed=3, crop=CROP)


@pytest.fixture(scope="session")
def ball_stick_phantom() -> Phantom:
    """Ball-and-stick phantom, SNR 20, seed 1."""
    return make_phantom(model="ball_stick", voxel_size=2.0, snr=20.0, seed=1, crop=CROP)
