"""Geometric models mapping reference pixel coordinates to target pixel coordinates.

Convention everywhere in the engine: pixel coordinates are (x = column, y = row), with (0, 0) the
top-left corner of the top-left pixel (GDAL convention); a pixel centre is at (i + 0.5, j + 0.5).
A model ``T`` maps a reference position to the target position showing the same ground:
``tgt_xy = T(ref_xy)``. All models are fitted by (weighted) least squares from point pairs.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.linalg
from numpy.typing import ArrayLike
from scipy.spatial.distance import cdist

from ..errors import NotEnoughMatchesError


def _as_points(xy: np.ndarray) -> np.ndarray:
    a = np.asarray(xy, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {a.shape}")
    return a


def _weights(w: np.ndarray | None, n: int) -> np.ndarray:
    if w is None:
        return np.ones(n)
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    if w.shape[0] != n:
        raise ValueError("weights must have one value per point")
    return np.clip(w, 0.0, None)


def _monomials(xy: np.ndarray, order: int) -> np.ndarray:
    x, y = xy[:, 0], xy[:, 1]
    cols = [x ** (i - j) * y ** j for i in range(order + 1) for j in range(i + 1)]
    return np.stack(cols, axis=1)


@dataclass(frozen=True)
class Transform:
    """Base class. Subclasses define ``kind``, ``min_points``, ``fit`` and ``__call__``."""

    kind: ClassVar[str] = "base"
    min_points: ClassVar[int] = 1
    n_params: ClassVar[int] = 0

    def __call__(self, xy: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def fit(cls, src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> Transform:
        raise NotImplementedError  # pragma: no cover

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover

    def residuals(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Euclidean error in target pixels of each pair."""
        return np.linalg.norm(self(_as_points(src)) - _as_points(dst), axis=1)

    def local_affine(self, xy: np.ndarray, eps: float = 0.5) -> np.ndarray:
        """Jacobian-based affine approximation (2, 3) around each point, shape (N, 2, 3)."""
        xy = _as_points(xy)
        c = self(xy)
        jx = (self(xy + [eps, 0]) - self(xy - [eps, 0])) / (2 * eps)
        jy = (self(xy + [0, eps]) - self(xy - [0, eps])) / (2 * eps)
        J = np.stack([jx, jy], axis=2)  # (N, 2, 2)
        t = c - np.einsum("nij,nj->ni", J, xy)
        return np.concatenate([J, t[:, :, None]], axis=2)


@dataclass(frozen=True)
class Shift(Transform):
    t: tuple[float, float] = (0.0, 0.0)
    kind: ClassVar[str] = "shift"
    min_points: ClassVar[int] = 1
    n_params: ClassVar[int] = 2

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        return _as_points(xy) + np.asarray(self.t)

    @classmethod
    def fit(cls, src, dst, weights=None) -> Shift:
        src, dst = _as_points(src), _as_points(dst)
        w = _weights(weights, len(src))
        if len(src) < 1 or w.sum() <= 0:
            raise NotEnoughMatchesError("No tie points to fit a shift.")
        d = ((dst - src) * w[:, None]).sum(0) / w.sum()
        return cls((float(d[0]), float(d[1])))

    def to_dict(self):
        return {"kind": self.kind, "t": list(self.t)}


@dataclass(frozen=True)
class Affine(Transform):
    """``dst = A[:, :2] @ src + A[:, 2]``."""

    matrix: tuple[tuple[float, float, float], tuple[float, float, float]] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    kind: ClassVar[str] = "affine"
    min_points: ClassVar[int] = 3
    n_params: ClassVar[int] = 6

    @property
    def A(self) -> np.ndarray:
        return np.asarray(self.matrix, dtype=np.float64)

    def __call__(self, xy):
        a = self.A
        return _as_points(xy) @ a[:, :2].T + a[:, 2]

    @classmethod
    def from_array(cls, a: ArrayLike) -> Affine:
        a = np.asarray(a, dtype=np.float64).reshape(2, 3)
        return cls(tuple(tuple(float(v) for v in row) for row in a))  # type: ignore[arg-type]

    @classmethod
    def from_similarity(cls, scale: float, angle_deg: float, tx: float, ty: float,
                        center: tuple[float, float] = (0.0, 0.0)) -> Affine:
        """Rotation by ``angle_deg`` and scaling by ``scale`` about ``center``, then shift (tx, ty)."""
        th = np.deg2rad(angle_deg)
        r = scale * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        c = np.asarray(center, dtype=np.float64)
        t = c - r @ c + np.array([tx, ty])
        return cls.from_array(np.concatenate([r, t[:, None]], axis=1))

    @classmethod
    def fit(cls, src, dst, weights=None) -> Affine:
        src, dst = _as_points(src), _as_points(dst)
        w = _weights(weights, len(src))
        if (w > 0).sum() < 3:
            raise NotEnoughMatchesError("At least 3 tie points are needed for an affine transform.")
        m = np.concatenate([src, np.ones((len(src), 1))], axis=1)
        sw = np.sqrt(w)[:, None]
        sol, *_ = np.linalg.lstsq(m * sw, dst * sw, rcond=None)
        return cls.from_array(sol.T)

    def inverse(self) -> Affine:
        a = np.vstack([self.A, [0, 0, 1]])
        return Affine.from_array(np.linalg.inv(a)[:2])

    def compose(self, other: Affine) -> Affine:
        """``self(other(x))``."""
        a = np.vstack([self.A, [0, 0, 1]]) @ np.vstack([other.A, [0, 0, 1]])
        return Affine.from_array(a[:2])

    def to_dict(self):
        return {"kind": self.kind, "matrix": [list(r) for r in self.matrix]}


@dataclass(frozen=True)
class Similarity(Affine):
    """Rotation, one scale and a shift (4 parameters): ``dst = s R(theta) src + t``, held as its affine matrix,
    so that everything that warps an :class:`Affine` warps it (QGIS's georeferencer calls it Helmert). It keeps
    shapes: a shift, a rotation and a change of pixel size between two images of one ground. With few tie
    points, or tie points on a small part of the image, it cannot tilt or shear the extrapolation as an affine
    can."""

    kind: ClassVar[str] = "similarity"
    min_points: ClassVar[int] = 2
    n_params: ClassVar[int] = 4

    @classmethod
    def fit(cls, src, dst, weights=None) -> Similarity:
        src, dst = _as_points(src), _as_points(dst)
        w = _weights(weights, len(src))
        if (w > 0).sum() < 2:
            raise NotEnoughMatchesError("At least 2 tie points are needed for a similarity transform.")
        c = (src * w[:, None]).sum(0) / w.sum()  # centred: a well-conditioned system
        x, y = (src - c).T
        one, zero = np.ones_like(x), np.zeros_like(x)
        # x' = a x - b y + tx ; y' = b x + a y + ty
        m = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
        sw = np.sqrt(np.concatenate([w, w]))[:, None]
        (a, b, tx, ty), *_ = np.linalg.lstsq(m * sw, np.concatenate([dst[:, 0], dst[:, 1]]) * sw[:, 0], rcond=None)
        r = np.array([[a, -b], [b, a]])
        t = np.array([tx, ty]) - r @ c
        return cls.from_array(np.concatenate([r, t[:, None]], axis=1))


@dataclass(frozen=True)
class Polynomial(Transform):
    """2-D polynomial of order 2 or 3 on normalised coordinates ``(xy - center) / scale``."""

    order: int = 2
    coef: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())
    center: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    kind: ClassVar[str] = "poly"

    @property
    def name(self) -> str:
        return f"poly{self.order}"

    @property
    def n_terms(self) -> int:
        return (self.order + 1) * (self.order + 2) // 2

    def __call__(self, xy):
        p = (_as_points(xy) - np.asarray(self.center)) / self.scale
        c = np.asarray(self.coef, dtype=np.float64)  # (2, T)
        return _monomials(p, self.order) @ c.T

    @classmethod
    def fit_order(cls, order: int, src, dst, weights=None) -> Polynomial:
        src, dst = _as_points(src), _as_points(dst)
        w = _weights(weights, len(src))
        nt = (order + 1) * (order + 2) // 2
        if (w > 0).sum() < nt + 1:
            raise NotEnoughMatchesError(
                f"At least {nt + 1} tie points are needed for a polynomial of order {order}.",
                "Use a simpler transform (affine or shift).")
        center = src.mean(0)
        scale = float(max(np.abs(src - center).max(), 1.0))
        m = _monomials((src - center) / scale, order)
        sw = np.sqrt(w)[:, None]
        sol, *_ = np.linalg.lstsq(m * sw, dst * sw, rcond=None)
        return cls(order, tuple(tuple(float(v) for v in col) for col in sol.T),  # type: ignore[arg-type]
                   (float(center[0]), float(center[1])), scale)

    def to_dict(self):
        return {"kind": self.name, "order": self.order, "coef": [list(c) for c in self.coef],
                "center": list(self.center), "scale": self.scale}


@dataclass(frozen=True)
class ThinPlateSpline(Transform):
    """Regularised thin-plate spline: affine part plus radial terms on control points."""

    controls: tuple[tuple[float, float], ...] = ()
    weights_: tuple[tuple[float, float], ...] = ()
    affine: tuple[tuple[float, float, float], tuple[float, float, float]] = ((1, 0, 0), (0, 1, 0))
    scale: float = 1.0
    smoothing: float = 0.0
    kind: ClassVar[str] = "tps"
    min_points: ClassVar[int] = 6

    @staticmethod
    def _kernel(r2: np.ndarray) -> np.ndarray:
        """``0.5 r^2 log r^2`` (0 at r = 0), computed in place of a fresh array."""
        k = np.log(np.maximum(r2, np.finfo(np.float64).tiny))
        k *= r2
        k *= 0.5
        return k

    def __call__(self, xy):
        p = _as_points(xy)
        a = np.asarray(self.affine)
        out = p @ a[:, :2].T + a[:, 2]
        if self.controls:
            c = np.asarray(self.controls) / self.scale
            q = p / self.scale
            w = np.asarray(self.weights_)
            step = max(1, 2 ** 24 // len(c))  # bounded memory: ~128 MB of distances at a time
            for s in range(0, len(q), step):
                out[s:s + step] += self._kernel(cdist(q[s:s + step], c, "sqeuclidean")) @ w
        return out

    @classmethod
    def fit(cls, src, dst, weights=None, smoothing: float | None = None) -> ThinPlateSpline:
        src, dst = _as_points(src), _as_points(dst)
        w = _weights(weights, len(src))
        keep = w > 0
        src, dst, w = src[keep], dst[keep], w[keep]
        n = len(src)
        if n < cls.min_points:
            raise NotEnoughMatchesError(f"At least {cls.min_points} tie points are needed for a thin-plate spline.",
                                        "Use a simpler transform (affine or shift).")
        scale = float(max(np.ptp(src, axis=0).max(), 1.0))
        q = src / scale
        lam = 1e-3 if smoothing is None else smoothing
        sys_ = np.zeros((n + 3, n + 3))
        sys_[:n, :n] = cls._kernel(cdist(q, q, "sqeuclidean"))
        sys_[np.arange(n), np.arange(n)] += lam / np.maximum(w, 1e-6)
        sys_[:n, n:n + 2] = src
        sys_[:n, n + 2] = 1.0
        sys_[n:, :n] = sys_[:n, n:].T
        rhs = np.concatenate([dst, np.zeros((3, 2))], axis=0)
        try:  # symmetric indefinite system: LDL^T (LAPACK sysv), ~15x faster than lstsq at 4000 points
            with warnings.catch_warnings():
                warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
                sol = scipy.linalg.solve(sys_, rhs, assume_a="sym", check_finite=False)
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgWarning):
            sol = np.linalg.lstsq(sys_, rhs, rcond=None)[0]  # (near-)singular, e.g. collinear points
        wts, aff = sol[:n], sol[n:]
        return cls(tuple(map(tuple, src.tolist())), tuple(map(tuple, wts.tolist())),
                   tuple(map(tuple, aff.T.tolist())), scale, lam)  # type: ignore[arg-type]

    def to_dict(self):
        return {"kind": self.kind, "controls": [list(c) for c in self.controls],
                "weights": [list(c) for c in self.weights_], "affine": [list(r) for r in self.affine],
                "scale": self.scale, "smoothing": self.smoothing}


def model_name(t: Transform) -> str:
    return t.name if isinstance(t, Polynomial) else t.kind


def min_points(kind: str) -> int:
    return {"shift": 1, "similarity": 2, "affine": 3, "poly2": 7, "poly3": 11, "tps": 6}[kind]


def fit_model(kind: str, src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> Transform:
    """Least-squares fit of the model named ``kind`` (shift, similarity, affine, poly2, poly3, tps)."""
    if kind == "shift":
        return Shift.fit(src, dst, weights)
    if kind == "similarity":
        return Similarity.fit(src, dst, weights)
    if kind == "affine":
        return Affine.fit(src, dst, weights)
    if kind in ("poly2", "poly3"):
        return Polynomial.fit_order(int(kind[-1]), src, dst, weights)
    if kind == "tps":
        return ThinPlateSpline.fit(src, dst, weights)
    raise ValueError(f"unknown transform kind {kind!r}")


def transform_from_dict(d: dict[str, Any]) -> Transform:
    kind = d["kind"]
    if kind == "shift":
        return Shift(tuple(d["t"]))
    if kind == "affine":
        return Affine.from_array(np.asarray(d["matrix"]))
    if kind == "similarity":
        return Similarity.from_array(np.asarray(d["matrix"]))
    if kind in ("poly2", "poly3"):
        return Polynomial(int(d["order"]), tuple(tuple(c) for c in d["coef"]),  # type: ignore[arg-type]
                          tuple(d["center"]), float(d["scale"]))
    if kind == "tps":
        return ThinPlateSpline(tuple(tuple(c) for c in d["controls"]), tuple(tuple(c) for c in d["weights"]),
                               tuple(tuple(r) for r in d["affine"]), float(d["scale"]),  # type: ignore[arg-type]
                               float(d["smoothing"]))
    raise ValueError(f"unknown transform kind {kind!r}")
