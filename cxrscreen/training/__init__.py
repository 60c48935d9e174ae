"""Training, metrics with confidence intervals, threshold calibration."""
