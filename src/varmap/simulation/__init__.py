"""Simulated acquisitions: protocols, tissue-cluster parameter priors, noise, and noisy signals.

Everything random takes a seed or a :class:`numpy.random.Generator`; nothing here touches a global
random state.  Units follow the rest of varmap: b in ms/µm² inside a :class:`~varmap.Protocol`,
diffusivities in µm²/ms.

Modules
-------
protocols
    :func:`hcp_protocol` and :func:`fibonacci_sphere`.
cluster_prior
    :class:`ClusterPrior`, the mixture of (truncated) Gaussians over a model's parameters.
prior_registry
    The registered priors of each model (:data:`PRIORS`, :func:`get_prior`).
noise
    :func:`add_noise`, the one place Rician and Gaussian noise is drawn.
datasets
    :func:`simulate` and its result, :class:`SimulatedData`.
"""

from ..estimators.likelihood import rician_log_pdf
from .datasets import SimulatedData, simulate
from .noise import NOISE_KINDS, add_noise
from .prior_registry import PRIORS, ball_stick_prior, get_prior, msdki_paper_prior, msdki_physical_prior
from .cluster_prior import ClusterPrior
from .protocols import STUDY_PROTOCOLS, fibonacci_sphere, hcp_protocol, study_protocol, trace_protocol

__all__ = [
    "NOISE_KINDS",
    "PRIORS",
    "ClusterPrior",
    "SimulatedData",
    "add_noise",
    "ball_stick_prior",
    "fibonacci_sphere",
    "get_prior",
    "hcp_protocol",
    "STUDY_PROTOCOLS",
    "trace_protocol",
    "study_protocol",
    "msdki_paper_prior",
    "msdki_physical_prior",
    "rician_log_pdf",
    "simulate",
]
