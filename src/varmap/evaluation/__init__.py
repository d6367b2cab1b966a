"""Evaluation against known truth: error metrics and Bayes-optimal (oracle) estimators."""

from .metrics import angular_error_deg, bias, error_table, rmse
from .oracle import OracleResult, ball_stick_oracle, msdki_oracle

__all__ = [
    "rmse",
    "bias",
    "angular_error_deg",
    "error_table",
    "OracleResult",
    "msdki_oracle",
    "ball_stick_oracle",
]
