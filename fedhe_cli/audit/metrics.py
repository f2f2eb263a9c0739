"""Image similarity: MSE, PSNR and SSIM (7x7 uniform window, like scikit-image's default)."""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import uniform_filter

WINDOW = 7
K1, K2 = 0.01, 0.03


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error."""
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images)."""
    err = mse(a, b)
    return math.inf if err == 0 else 10.0 * math.log10(data_range**2 / err)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity of two 2-D images in [0, data_range]."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    if x.shape != y.shape or x.ndim != 2 or min(x.shape) < WINDOW:
        raise ValueError("ssim needs two equal 2-D images of at least 7x7 pixels")
    n = WINDOW * WINDOW
    cov_norm = n / (n - 1)  # sample covariance, as scikit-image does
    ux, uy = uniform_filter(x, WINDOW), uniform_filter(y, WINDOW)
    vx = cov_norm * (uniform_filter(x * x, WINDOW) - ux * ux)
    vy = cov_norm * (uniform_filter(y * y, WINDOW) - uy * uy)
    vxy = cov_norm * (uniform_filter(x * y, WINDOW) - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (WINDOW - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())
