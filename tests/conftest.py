"""Shared test fixtures: small acquisition protocols and data made by varmap's own simulator.

Every fixture here is session-scoped and deterministic (fixed seeds), and sized so that the whole
suite stays quick.  Arrays handed out are read-only: a test that wants to change
data must copy it first, so no test can leak a change into another.

Protocols
    ``hcp_small_protocol``  HCP-like: 2 b=0 and 10 well-spread directions on b = 1000, 2000, 3000 s/mm².
    ``one_b0_protocol``     the same shells with a single b=0 measurement.
    ``clinical_protocol``   two shells, b = 1000, 2000 s/mm², 2 b=0 and 8 directions per shell.

Simulated data (:class:`varmap.simulation.SimulatedData`, S0 = 1000, 300 voxels, on
``hcp_small_protocol``)
    ``msdki_data`` / ``msdki_data_noiseless``
    ``ball_stick_data`` / ``ball_stick_data_noiseless``
    ``simulated``  a factory for any registered model, protocol, size, SNR and seed.

Scripts
    ``benchmark_script``  loads a script of ``benchmarks/`` (no package) as a module, by its name.

A noiseless dataset holds exactly the parameters, labels and S0 of the noisy dataset of the same
arguments (the simulator draws the parameters before the noise), with ``sigma = 0``, ``snr = inf``
and ``noise = "none"``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from varmap.protocol import Protocol
from varmap.signal_models import get_signal_model
from varmap.simulation import PRIORS, SimulatedData, get_prior, hcp_protocol, simulate

#: Seed of every simulated dataset in this file.
SEED = 0
#: Voxels of the ready-made datasets.
N_VOXELS = 300
#: b=0 signal of the simulated voxels, raw units (not 1, so that a missing normalisation shows).
S0 = 1000.0
#: SNR (mean S0 / sigma) of the noisy datasets.
SNR = 50.0


@pytest.fixture(scope="session")
def seed() -> int:
    """The seed the shared datasets are simulated with."""
    return SEED


# ---------------------------------------------------------------------------------------- protocols
@pytest.fixture(scope="session")
def hcp_small_protocol() -> Protocol:
    """HCP-like multi-shell protocol: 2 b=0, then 10 directions on each of b = 1000, 2000, 3000 s/mm².

    Built by :func:`varmap.simulation.hcp_protocol` (directions spread by electrostatic repulsion,
    different on every shell); 32 measurements.
    """
    return hcp_protocol(n_b0=2, n_directions=10, shells=(1000.0, 2000.0, 3000.0), seed=SEED)


@pytest.fixture(scope="session")
def one_b0_protocol() -> Protocol:
    """Like ``hcp_small_protocol`` but with a single b=0 measurement (31 measurements)."""
    return hcp_protocol(n_b0=1, n_directions=10, shells=(1000.0, 2000.0, 3000.0), seed=SEED)


@pytest.fixture(scope="session")
def clinical_protocol() -> Protocol:
    """Two-shell clinical protocol: 2 b=0, then 8 directions on each of b = 1000, 2000 s/mm² (18 in all).

    The smallest protocol both registered models accept (MS-DKI needs two non-zero shells,
    ball-and-stick six diffusion-weighted measurements).
    """
    return hcp_protocol(n_b0=2, n_directions=8, shells=(1000.0, 2000.0), seed=SEED)


# ---------------------------------------------------------------------------------------- data
def default_prior_name(model_name: str) -> str:
    """The prior the shared datasets draw from: MS-DKI's physical prior, else the first registered one.

    The physical MS-DKI prior keeps D·K·b_max < 3, so its signals decay with b and noiseless fits
    have a unique answer; the paper's prior does not.
    """
    if model_name not in PRIORS:
        raise ValueError(
            f"signal model {model_name!r} has no prior in varmap.simulation.PRIORS; register one so the "
            f"shared test battery can simulate its data."
        )
    return "physical" if model_name == "msdki" else next(iter(PRIORS[model_name]))


def _prior_kwargs(model_name: str, prior_name: str, protocol: Protocol) -> dict[str, float]:
    # The physical MS-DKI prior needs the protocol's largest b-value (ms/µm²).
    if (model_name, prior_name) == ("msdki", "physical"):
        return {"b_max": float(protocol.bvals.max())}
    return {}


def _readonly(data: SimulatedData) -> SimulatedData:
    arrays = [data.signals, data.labels, data.S0, *data.params.values()]
    for array in arrays:
        array.setflags(write=False)
    return data


_CACHE: dict[tuple, SimulatedData] = {}


def simulate_dataset(
    model_name: str,
    protocol: Protocol,
    *,
    noiseless: bool = False,
    n_voxels: int = N_VOXELS,
    snr: float = SNR,
    seed: int = SEED,
    prior: str | None = None,
) -> SimulatedData:
    """Simulate (and cache) a dataset of a registered model with :func:`varmap.simulation.simulate`.

    Parameters
    ----------
    model_name : str
        Registered signal model.
    protocol : Protocol
    noiseless : bool
        Return the noise-free signals of the same draws (``sigma = 0``, ``snr = inf``,
        ``noise = "none"``).
    n_voxels : int
    snr : float
        Mean S0 / sigma of the Rician noise (also used for the draws of a noiseless dataset).
    seed : int
    prior : str, optional
        Registered prior of the model; default :func:`default_prior_name`.

    Returns
    -------
    SimulatedData
        Read-only arrays, S0 = 1000 in every voxel.
    """
    prior = prior or default_prior_name(model_name)
    key = (model_name, protocol, noiseless, n_voxels, snr, seed, prior)
    if key not in _CACHE:
        model = get_signal_model(model_name, protocol)
        cluster_prior = get_prior(model_name, prior, **_prior_kwargs(model_name, prior, protocol))
        data = simulate(model, cluster_prior, n_voxels=n_voxels, snr=snr, S0=S0, seed=seed)
        if noiseless:
            clean = model.predict(data.params, S0=data.S0)
            data = dataclasses.replace(data, signals=clean, sigma=0.0, snr=math.inf, noise="none")
        _CACHE[key] = _readonly(data)
    return _CACHE[key]


@pytest.fixture(scope="session")
def simulated() -> Callable[..., SimulatedData]:
    """Factory ``simulated(model_name, protocol, *, noiseless=False, n_voxels=300, snr=50, seed=0,
    prior=None)``: a cached, read-only :class:`~varmap.simulation.SimulatedData` (see
    :func:`simulate_dataset`)."""
    return simulate_dataset


@pytest.fixture(scope="session")
def msdki_data(hcp_small_protocol) -> SimulatedData:
    """300 MS-DKI voxels from the physical prior on ``hcp_small_protocol``, Rician noise at SNR 50."""
    return simulate_dataset("msdki", hcp_small_protocol)


@pytest.fixture(scope="session")
def msdki_data_noiseless(hcp_small_protocol) -> SimulatedData:
    """The voxels of ``msdki_data`` without noise."""
    return simulate_dataset("msdki", hcp_small_protocol, noiseless=True)


@pytest.fixture(scope="session")
def ball_stick_data(hcp_small_protocol) -> SimulatedData:
    """300 ball-and-stick voxels (white matter, grey matter, CSF clusters) on ``hcp_small_protocol``,
    Rician noise at SNR 50."""
    return simulate_dataset("ball_stick", hcp_small_protocol)


@pytest.fixture(scope="session")
def ball_stick_data_noiseless(hcp_small_protocol) -> SimulatedData:
    """The voxels of ``ball_stick_data`` without noise."""
    return simulate_dataset("ball_stick", hcp_small_protocol, noiseless=True)


@pytest.fixture(scope="session")
def benchmark_script() -> Callable[[str], ModuleType]:
    """``load(name)``: the script ``benchmarks/<name>.py`` as a module."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
