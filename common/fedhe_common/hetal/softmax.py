"""Softmax for HETAL training: the exact one (owner side) and the polynomial one (mode server).

``PolySoftmax`` holds the coefficients that both the encrypted evaluation (``he_softmax``)
and the float64 twin (``PolySoftmax.__call__``) use, in the same normalised form:

    E' = (p(z) g)^(2^s)        p(z) ~ exp(z / 2^s), g = norm^(-1/2^s)  so E' = e^z / norm
    S' = sum over classes E'   (= S / norm, S in [s_lo, s_hi])
    y  = q(S' - 1)             q(u) ~ 1 / (1 + u)
    P  = E' y

with norm = (s_lo + s_hi) / 2, so the inverse's variable lies in [-1, 1] and every
coefficient stays small (CKKS precision at scale 2^28).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic

import numpy as np
from numpy.polynomial import chebyshev as cheb
from numpy.typing import NDArray

from fedhe_common.hetal.backend import CT, Backend, rotsum
from fedhe_common.hetal.params import ServerSoftmax

Array = NDArray[np.float64]


def softmax_exact(z: Array) -> Array:
    """Row-wise softmax (numerically stable)."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)


def exp_coefficients(bound: float, degree: int, squarings: int, unit: bool = False) -> Array:
    """Power-basis coefficients of p(z) ~ exp(z / 2**squarings) on [-bound, bound].

    ``unit``: in the variable t = z / bound in [-1, 1] instead (the encrypted evaluation's
    input: O(1) coefficients, no tiny plaintexts).
    """
    half = bound / 2**squarings
    t = cheb.cheb2poly(cheb.chebinterpolate(lambda u: np.exp(half * u), degree))
    if unit:
        return np.asarray(t, dtype=np.float64)
    return np.asarray(t * (1.0 / bound) ** np.arange(degree + 1), dtype=np.float64)


def inverse_coefficients(lo: float, hi: float, degree: int) -> Array:
    """q(u) ~ 1 / (1 + u) on [lo, hi] (near-minimax relative error), power basis in u.

    Chebyshev-basis weighted least squares with Lawson reweighting towards the minimax
    relative error.
    """
    u = np.linspace(lo, hi, 4000)
    s = 1.0 + u
    weights = np.full_like(u, 1.0 / len(u))
    fit = np.polynomial.Chebyshev.fit(u, 1.0 / s, degree, w=s)
    for _ in range(60):
        weights = weights * (np.abs(fit(u) * s - 1.0) + 1e-15)
        weights /= weights.sum()
        fit = np.polynomial.Chebyshev.fit(u, 1.0 / s, degree, w=s * np.sqrt(weights))
    return np.asarray(fit.convert(kind=np.polynomial.Polynomial).coef, dtype=np.float64)


def s_max(classes: int, bound: float) -> float:
    """The largest class sum S the owner lets through: one class at +bound, the rest near 0."""
    return classes - 1 + math.exp(bound)


@dataclass(frozen=True)
class PolySoftmax:
    """The mode-server softmax: coefficients and the float64 evaluation of the same circuit."""

    spec: ServerSoftmax
    classes: int
    exp_coef: Array
    exp_coef_unit: Array
    inv_coef: Array
    norm: float
    s_lo: float
    s_hi: float

    @classmethod
    def build(cls, spec: ServerSoftmax, classes: int) -> PolySoftmax:
        """Fit (once per spec and class count, cached) the polynomials; see :func:`_fit`."""
        return _fit(spec, classes)

    def inverse_error(self) -> float:
        """Max relative error of the inverse polynomial on [s_lo, s_hi]."""
        s = np.linspace(self.s_lo, self.s_hi, 20001) / self.norm
        return float(np.max(np.abs(self._inverse(s) * s - 1.0)))

    def _inverse(self, s: Array) -> Array:
        y = np.polynomial.polynomial.polyval(s - 1.0, self.inv_coef)
        return np.asarray(y, dtype=np.float64)

    def exp_scaled(self, z: Array) -> Array:
        """E' = e^z / norm as the circuit computes it."""
        e = np.polynomial.polynomial.polyval(z, self.exp_coef)
        for _ in range(self.spec.squarings):
            e = e * e
        return np.asarray(e, dtype=np.float64)

    def __call__(self, z: Array) -> Array:
        """Approximate softmax of logits z (rows x classes)."""
        e = self.exp_scaled(z)
        return np.asarray(e * self._inverse(e.sum(axis=1, keepdims=True)), dtype=np.float64)


@lru_cache(maxsize=16)
def _fit(spec: ServerSoftmax, classes: int) -> PolySoftmax:
    """Fit the polynomials for ``classes`` classes and logits in [-bound, bound].

    The owner's projection (``bound_logits``) keeps classes <= S <= s_max on its
    training data; the margins cover the exp polynomial's error.
    """
    lo = 0.95 * classes
    hi = spec.inv_margin * s_max(classes, spec.bound)
    norm = (lo + hi) / 2.0
    inv = inverse_coefficients(lo / norm - 1.0, hi / norm - 1.0, spec.inv_degree)
    gain = norm ** (-1.0 / 2**spec.squarings)
    expc = exp_coefficients(spec.bound, spec.exp_degree, spec.squarings) * gain
    unit = exp_coefficients(spec.bound, spec.exp_degree, spec.squarings, unit=True) * gain
    return PolySoftmax(spec, classes, expc, unit, inv, norm, lo, hi)


def bound_logits(w: Array, train_x: Array, bound: float, classes: int) -> Array:
    """The owner's refresh projection for ``mode: server`` (data-dependent, owner side only).

    Re-centre the class rows (so sum_r z_r = 0 and S >= classes by Jensen), then shrink W
    by the largest factor alpha <= 1 with |z| <= bound and S <= s_max on every training
    sample (S(alpha) grows with alpha, so bisection finds it). The server only ever sees
    fresh encryptions of the result.
    """
    w = w - w.mean(axis=0, keepdims=True)
    z = train_x @ w.T
    peak = float(np.abs(z).max()) if z.size else 0.0
    alpha = min(1.0, bound / peak) if peak > 0 else 1.0
    limit = s_max(classes, bound)

    def too_big(a: float) -> bool:
        return bool(np.exp(a * z).sum(axis=1).max() > limit)

    if too_big(alpha):
        lo, hi = 0.0, alpha
        for _ in range(40):
            mid = (lo + hi) / 2.0
            lo, hi = (lo, mid) if too_big(mid) else (mid, hi)
        alpha = lo
    return np.asarray(w * alpha, dtype=np.float64)


# -- encrypted evaluation (server side: evaluation keys only) --------------------------------
def _factor(ct: Any) -> float:
    return float(getattr(ct, "f", 1.0))


def _ratio(be: Backend[CT], level: int) -> float:
    """q_level / scale: the factor a ciphertext product at ``level`` picks up (1 in numpy)."""
    primes = getattr(be, "primes", None)
    if primes is None:
        return 1.0
    return float(primes[be.depth - level]) / float(be.scale)  # type: ignore[attr-defined]


class _Powers(Generic[CT]):
    """u, u^2, u^4 of one ciphertext, shared by several polynomials (depth 3 for degree 7)."""

    def __init__(self, be: Backend[CT], u: CT, degree: int) -> None:
        self.be, self.u, self.degree = be, u, degree
        self.x2 = be.mul(u, u) if degree >= 2 else None
        self.x4 = be.mul(self.x2, self.x2) if degree >= 4 and self.x2 is not None else None

    def _low(self, k: int, coef: Any, target: float) -> CT:
        """coef u^k (k <= 3) carrying factor ``target``."""
        be = self.be
        if k == 1:
            return be.mul_plain(self.u, coef, target)
        assert self.x2 is not None
        if k == 2:
            return be.mul_plain(self.x2, coef, target)
        q = _ratio(be, be.level(self.x2))
        a = be.mul_plain(self.u, coef, target / (_factor(self.x2) * q))
        return be.mul(a, self.x2)

    def poly(self, coefs: Sequence[Any]) -> CT:
        """sum_k coefs[k] u^k with every term at factor 1 (coefficients: scalars or vectors)."""
        be = self.be
        deg = len(coefs) - 1
        if not 1 <= deg <= self.degree or deg > 7:
            raise ValueError(f"polynomial degree {deg} outside 1..{min(self.degree, 7)}")
        acc: CT | None = None
        term: CT
        for k in range(1, deg + 1):
            if k <= 3:
                term = self._low(k, coefs[k], 1.0)
            elif k == 4:
                assert self.x4 is not None
                term = be.mul_plain(self.x4, coefs[4], 1.0)
            else:
                assert self.x4 is not None
                q = _ratio(be, be.level(self.x4))
                term = be.mul(self.x4, self._low(k - 4, coefs[k], 1.0 / (q * _factor(self.x4))))
            acc = term if acc is None else be.add(acc, term)
        assert acc is not None
        return be.add_plain(acc, coefs[0])


def he_softmax(
    be: Backend[CT], t: CT, sm: PolySoftmax, class_mask: Array, class_steps: Sequence[int]
) -> CT:
    """P^ = P + i Rot(P, 1) from t = Z / bound tiled horizontally (DiagATB's operand).

    ``class_mask`` (:func:`~fedhe_common.hetal.trainer.softmax_mask`: 1 on real classes'
    columns that DiagATB can reach) is folded into exp's coefficients, so padded classes
    and unread columns give E' = 0: every class sum is then either exact or partial and
    small, so no slot holds the inverse polynomial far outside its domain (large garbage
    slots would amplify CKKS noise in every slot of the next product). ``class_steps``
    (1, 2, ..., cp/2) sum the classes of a row. i P comes from a second inverse
    polynomial with coefficients times i (no level for i).
    """
    spec = sm.spec
    mask = np.asarray(class_mask, dtype=np.float64)
    e: CT = _Powers(be, t, spec.exp_degree).poly([c * mask for c in sm.exp_coef_unit])
    for _ in range(spec.squarings):
        e = be.mul(e, e)
    s = rotsum(be, e, class_steps)
    pw: _Powers[CT] = _Powers(be, be.add_plain(s, -1.0), spec.inv_degree)
    y = pw.poly(list(sm.inv_coef))
    iy = pw.poly([1j * c for c in sm.inv_coef])
    p, ip = be.mul(e, y), be.mul(e, iy)
    return be.add(p, be.rot(ip, 1))
