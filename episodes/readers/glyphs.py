"""Built-in procedural glyphs: a seeded, handwriting-like character set that needs no download.

Model (after Omniglot's structure, drawn in a few lines of numpy):

* An **alphabet** has a style: a stroke count range, a curvature, a stroke width range, and a
  vocabulary of stroke shapes (cubic Bezier curves) that its characters reuse. Characters of one
  alphabet therefore look alike, and within-alphabet episodes are harder than mixed ones.
* A **character** (a class) is 1 to 4 strokes: vocabulary strokes placed with a random rotation,
  scale and shift, or now and then a fresh stroke, the whole glyph centred and scaled to the canvas.
* A **drawing** (an instance) redraws the character: every control point jitters (motor noise),
  the pen width varies, and the drawing gets a random affine (rotation, anisotropic scale, shear,
  shift).

Rendering is vectorised over all drawings at once: each stroke is sampled densely, and the ink is
a line integral of a Gaussian pen, computed as one batched matrix product of separable Gaussian
profiles (``[H, P] @ [P, W]`` per image). This is anti-aliased and renders 600 classes x 20
drawings in about a second on one core.

Default splits (:data:`SPLITS`) partition the 30 alphabets of 20 characters: alphabets 0-19 are
``base`` (400 classes), 20-23 ``val`` (80), 24-29 ``novel`` (120), so novel classes and their
styles are never seen in training. Each alphabet is generated from its own seed, so loading one
split does not generate the others and always gives the same drawings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import DatasetError
from ..imageset import ImageSet

NUM_ALPHABETS = 30
CLASSES_PER_ALPHABET = 20
SPLITS = {"base": range(0, 20), "val": range(20, 24), "novel": range(24, 30)}

_BERNSTEIN_CACHE: dict[int, np.ndarray] = {}


def _bernstein(t: int) -> np.ndarray:
    if t not in _BERNSTEIN_CACHE:
        u = np.linspace(0.0, 1.0, t)[:, None]
        k = np.arange(4)[None, :]
        _BERNSTEIN_CACHE[t] = np.array([1, 3, 3, 1])[None, :] * u ** k * (1 - u) ** (3 - k)
    return _BERNSTEIN_CACHE[t]


def _random_strokes(rng: np.random.Generator, n: int, curvature: float) -> np.ndarray:
    """``n`` cubic Bezier strokes ``[n, 4, 2]`` in the unit canvas [-1, 1]^2."""
    start = rng.uniform(-0.6, 0.6, (n, 2))
    angle = rng.uniform(0, 2 * np.pi, n)
    length = rng.uniform(0.6, 1.4, n)
    direction = np.stack([np.cos(angle), np.sin(angle)], 1)
    normal = np.stack([-direction[:, 1], direction[:, 0]], 1)
    along = np.array([0.0, 1 / 3, 2 / 3, 1.0])[None, :, None]
    bend = rng.normal(0, curvature, (n, 4, 1)) * np.array([0, 1, 1, 0])[None, :, None]
    return start[:, None] + length[:, None, None] * (along * direction[:, None] + bend * normal[:, None])


def _alphabet(rng: np.random.Generator, n_classes: int, per_class: int) -> tuple[np.ndarray, np.ndarray,
                                                                                 np.ndarray]:
    """Control points ``[n_classes, per_class, S, 4, 2]``, stroke mask ``[n_classes, S]``, pen
    widths ``[n_classes, per_class]`` (in canvas units) for one alphabet."""
    s_max = 4
    lo = int(rng.integers(2, 4))
    hi = min(s_max, lo + 1)
    curvature = rng.uniform(0.15, 0.6)
    width = rng.uniform(0.05, 0.09)
    vocabulary = _random_strokes(rng, int(rng.integers(3, 6)), curvature)

    # characters: vocabulary strokes under a random similarity, sometimes a fresh stroke
    n_strokes = rng.integers(lo, hi + 1, n_classes)
    mask = np.arange(s_max)[None, :] < n_strokes[:, None]
    pick = rng.integers(0, len(vocabulary), (n_classes, s_max))
    strokes = vocabulary[pick]                                           # [C, S, 4, 2]
    angles = rng.uniform(-np.pi, np.pi, int(rng.integers(2, 4)))        # the alphabet's stroke angles
    theta = angles[rng.integers(0, len(angles), (n_classes, s_max))] + rng.normal(0, 0.2, (n_classes, s_max))
    rot = np.stack([np.cos(theta), -np.sin(theta), np.sin(theta), np.cos(theta)], -1).reshape(
        n_classes, s_max, 1, 2, 2)
    centre = strokes.mean(2, keepdims=True)
    scale = rng.uniform(0.6, 1.0, (n_classes, s_max, 1, 1))
    strokes = ((strokes - centre)[..., None, :] @ rot.swapaxes(-1, -2))[..., 0, :] * scale
    anchors = rng.uniform(-0.5, 0.5, (int(rng.integers(3, 6)), 2))     # where the alphabet puts strokes
    shift = anchors[rng.integers(0, len(anchors), (n_classes, s_max))]
    shift = shift + rng.normal(0, 0.12, (n_classes, s_max, 2))
    strokes = strokes + shift[:, :, None, :]
    fresh = rng.random((n_classes, s_max)) < 0.1
    strokes[fresh] = _random_strokes(rng, int(fresh.sum()), curvature)
    strokes += rng.normal(0, 0.05, strokes.shape)

    # centre the visible strokes of each character and fit them into [-0.75, 0.75]
    pts = np.where(mask[:, :, None, None], strokes, np.nan).reshape(n_classes, -1, 2)
    lo_xy, hi_xy = np.nanmin(pts, 1), np.nanmax(pts, 1)
    mid = (lo_xy + hi_xy) / 2
    span = np.maximum((hi_xy - lo_xy).max(1), 0.3)
    strokes = (strokes - mid[:, None, None]) * (1.5 / span)[:, None, None, None]

    # drawings: motor noise on control points, per-stroke shift, pen width
    inst = np.repeat(strokes[:, None], per_class, axis=1)                 # [C, I, S, 4, 2]
    inst = inst + rng.normal(0, 0.09, inst.shape) + rng.normal(0, 0.07, (*inst.shape[:3], 1, 2))
    widths = width * rng.uniform(0.8, 1.25, (n_classes, per_class))
    return inst, mask, widths


def _affine(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random affine maps ``[n, 2, 3]``: rotation, anisotropic scale, shear, shift."""
    theta = rng.normal(0, np.deg2rad(10), n)
    sx, sy = np.exp(rng.normal(0, 0.1, (2, n)))
    shear = rng.normal(0, 0.1, n)
    c, s = np.cos(theta), np.sin(theta)
    a = np.empty((n, 2, 3))
    a[:, 0, 0], a[:, 0, 1] = c * sx, c * shear * sy - s * sy
    a[:, 1, 0], a[:, 1, 1] = s * sx, s * shear * sy + c * sy
    a[:, :, 2] = rng.normal(0, 0.08, (n, 2))
    return a


def render_strokes(points: np.ndarray, weights: np.ndarray, widths: np.ndarray, size: int,
                   chunk: int = 1024) -> torch.Tensor:
    """Rasterise polylines with a Gaussian pen: uint8 ``[N, 1, size, size]``, ink high.

    ``points [N, P, 2]`` in the unit canvas [-1, 1]^2 (x, y), ``weights [N, P]`` the arc length each
    point stands for (0 for padding), ``widths [N]`` the pen's standard deviation in canvas units.
    The line integral of a 2D Gaussian along a stroke is separable per point, so an image is
    ``Gy^T diag(w) Gx``: one batched matrix product instead of a distance per pixel and segment.
    """
    n = points.shape[0]
    out = torch.empty((n, 1, size, size), dtype=torch.uint8)
    grid = torch.linspace(-1, 1, size, dtype=torch.float32)
    # padding sits at the end of each row: render rows of similar length together, trimmed
    used = np.where(weights > 0, np.arange(weights.shape[1])[None, :] + 1, 0).max(1)
    order = np.argsort(used, kind="stable")
    for start in range(0, n, chunk):
        rows = order[start:start + chunk]
        keep = int(used[rows].max())
        p = torch.from_numpy(points[rows, :keep]).float()
        w = torch.from_numpy(weights[rows, :keep]).float()
        sigma = torch.from_numpy(widths[rows]).float()[:, None, None]
        gx = torch.exp(-(p[..., 0:1] - grid) ** 2 / (2 * sigma ** 2))      # [n, P, W]
        gy = torch.exp(-(p[..., 1:2] - grid) ** 2 / (2 * sigma ** 2))      # [n, P, H]
        ink = torch.bmm((gy * w[..., None]).transpose(1, 2), gx)         # [n, H, W]
        ink = ink / (math.sqrt(2 * math.pi) * sigma)                      # 1 on a stroke's centre line
        ink = (1 - torch.exp(-2.5 * ink)) / (1 - math.exp(-2.5))
        out[torch.from_numpy(rows), 0] = (ink.clamp_(0, 1) * 255).round_().to(torch.uint8)
    return out


def make_glyphs(num_classes: int = 600, per_class: int = 20, size: int = 28, seed: int = 0, *,
                classes_per_alphabet: int = CLASSES_PER_ALPHABET,
                alphabets: Sequence[int] | None = None, name: str | None = None) -> ImageSet:
    """Generate the glyph set: ``num_classes`` characters in alphabets of ``classes_per_alphabet``.

    ``alphabets`` picks which alphabets (0-based) to generate; each is drawn from its own seed
    ``(seed, alphabet)``, so a subset gives the same drawings as the full set. Classes are named
    ``"alphabetAA/charCC"`` with group ``"alphabetAA"``.
    """
    for key, value in (("num_classes", num_classes), ("per_class", per_class), ("size", size),
                       ("classes_per_alphabet", classes_per_alphabet)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise DatasetError(f"glyphs: {key} must be a positive integer, got {value!r}")
    if size < 8:
        raise DatasetError(f"glyphs: size must be at least 8 pixels, got {size}")
    n_alpha = -(-num_classes // classes_per_alphabet)
    chosen = list(range(n_alpha)) if alphabets is None else [int(a) for a in alphabets]
    bad = [a for a in chosen if not 0 <= a < n_alpha]
    if bad:
        raise DatasetError(f"glyphs: alphabets {bad} out of range 0..{n_alpha - 1}")
    t = max(16, size)                                   # samples per stroke: spacing below the pen width
    basis = _bernstein(t)
    all_pts, all_w, all_width, class_names, groups = [], [], [], [], []
    for a in chosen:
        rng = np.random.default_rng([seed, a])
        n_cls = min(classes_per_alphabet, num_classes - a * classes_per_alphabet)
        ctrl, mask, widths = _alphabet(rng, n_cls, per_class)
        curve = np.einsum("tk,cisk d->cistd".replace(" ", ""), basis, ctrl)   # [C, I, S, T, 2]
        seg = np.linalg.norm(np.diff(curve, axis=3), axis=-1)              # [C, I, S, T-1]
        w = np.zeros(curve.shape[:-1])
        w[..., :-1] += seg / 2
        w[..., 1:] += seg / 2
        w *= mask[:, None, :, None]
        aff = _affine(rng, n_cls * per_class).reshape(n_cls, per_class, 1, 1, 2, 3)
        curve = (aff[..., :2] @ curve[..., None])[..., 0] + aff[..., 2]
        all_pts.append(curve.reshape(n_cls * per_class, -1, 2))
        all_w.append(w.reshape(n_cls * per_class, -1))
        all_width.append(widths.reshape(-1))
        group = f"alphabet{a:02d}"
        class_names += [f"{group}/char{c:02d}" for c in range(n_cls)]
        groups += [group] * n_cls
    images = render_strokes(np.concatenate(all_pts), np.concatenate(all_w), np.concatenate(all_width), size)
    labels = torch.arange(len(class_names)).repeat_interleave(per_class)
    # the seed is part of every id: sets drawn with other seeds have other fingerprints
    ids = [f"s{seed}/{c}/{i:02d}" for c in class_names for i in range(per_class)]
    return ImageSet(images, labels, class_names, ids, groups, name or f"glyphs(seed={seed})")


def load_glyphs(split: str | None = None, *, size: int = 28, seed: int = 0, per_class: int = 20,
                num_alphabets: int = NUM_ALPHABETS) -> ImageSet:
    """The default glyph set or one of its splits (``base``, ``val``, ``novel``; see :data:`SPLITS`)."""
    if split is None:
        alphabets = range(num_alphabets)
    elif split in SPLITS:
        alphabets = SPLITS[split]
        if num_alphabets != NUM_ALPHABETS:
            frac = {"base": (0, 2 / 3), "val": (2 / 3, 0.8), "novel": (0.8, 1.0)}[split]
            alphabets = range(round(frac[0] * num_alphabets), round(frac[1] * num_alphabets))
            if len(alphabets) == 0:
                raise DatasetError(f"glyphs: {num_alphabets} alphabets leave the {split} split without an "
                                   "alphabet; use alphabets=5 or more")
    else:
        raise DatasetError(f"glyphs: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    name = f"glyphs{'/' + split if split else ''}(seed={seed})"
    return make_glyphs(num_alphabets * CLASSES_PER_ALPHABET, per_class, size, seed, alphabets=alphabets,
                       name=name)
