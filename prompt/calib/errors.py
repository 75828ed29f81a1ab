"""Errors of the calibration store, importable without the pipeline's dependencies."""

from __future__ import annotations


class MissingCalibrationError(LookupError):
    """No calibration in the index is valid for the job (not retriable by reloading)."""
