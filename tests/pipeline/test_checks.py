"""Options and device, checked before any file is read."""

from __future__ import annotations

import pytest
import torch

from varmap.io import InputError
from varmap.pipeline.checks import checked_device, checked_options


def test_only_given_options_come_back_converted():
    assert checked_options("gmvae", {}) == {}
    checked = checked_options("vae", {"n_epochs": 3.0, "learning_rate": 1})
    assert checked == {"n_epochs": 3, "learning_rate": 1.0}
    assert type(checked["n_epochs"]) is int and type(checked["learning_rate"]) is float


def test_bad_options_name_the_flag_and_the_valid_ones():
    with pytest.raises(InputError, match=r"option\(s\) --n-epochs do not apply to method nlls; its options "
                                         r"are chunk_size, --likelihood, --max-iter, --sigma, --tol\."):
        checked_options("nlls", {"n_epochs": 3})
    with pytest.raises(InputError, match="likelihood must be one of"):
        checked_options("nlls", {"likelihood": "poisson"})
    with pytest.raises(ValueError, match="unknown method 'mcmc'"):
        checked_options("mcmc", {})


def test_device():
    assert checked_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="device 'tpu' is not known"):
        checked_device("tpu")
