"""The embedded default data set: a deterministic synthetic ImageFolder tree of object images.

Why it looks the way it does (docs/data.md tells the longer story): a first synthetic set let a
*random* RGB AlexNet reach 85-90% on the linear probe, because hue plus a crude shape cue gave the
class away.  A benchmark on which an untrained network ties the best method separates
nothing, so this generator is built so that

* colour alone does not give the class away: every class has two hue modes, and each of the eight
  hue modes is shared by four classes (with the default 16 classes);
* colour *is* predictable from what the object is: the class fixes its two hue modes, so a
  colorization network has to recognise the object to colour it;
* the class is a conjunction of a shape family and a luminance texture: every shape is used by two
  classes and every texture by two classes, and the two classes that share a shape (or a texture)
  also share one hue mode, so neither hue + shape nor hue + texture decides the class;
* texture lives only in lightness (L) and colour only in ab (each object has one constant ab
  vector), so a filter bank cannot read the texture off a colour channel;
* the object's lightness is jittered per instance (base level, texture contrast and polarity,
  shading), so luminance statistics do not reveal the class either;
* the background has the same statistics at every position (stationary lightness and colour noise,
  pebbles and twigs at uniform positions and orientations) and a per-image hue unrelated to the
  class: nothing in it tells up from down or left from right, so the relative position of two
  patches (context prediction) and the content of a hole (context encoder) must be read from the
  objects;
* class objects stand upright (within about 23 degrees) and the main object is large and near the
  centre, so its parts and outline keep a fixed arrangement around the image centre;
* instances vary in scale, tilt, aspect, smooth deformation and position, and 0-3 smaller
  distractors (other classes' objects in their own colours, or neutral grey/brown "rocks") sit
  behind or partly in front of the main object.  The label is the main (largest) object's class.

Colours are composed in CIE Lab (D65) and converted to sRGB once per image, so the ab target a
colorization network sees is exactly the hue mode chosen for the object (up to JPEG).

Determinism: image ``index`` of ``split`` is rendered from its own random stream seeded by
``SeedSequence([seed, split_id, index])``, so the tree is byte-identical for any number of workers.
Image ``index`` has class ``index % num_classes`` (balanced splits).  The class folders are named
by ``CLASS_NAMES``; note that torchvision's ImageFolder numbers classes in *alphabetical* folder
order, which differs from the order of ``CLASS_NAMES`` (the ``label`` that ``render`` returns);
``manifest.json`` lists the class names in ``render``-label order.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ssl_bench.errors import ConfigError, OutputExistsError

__all__ = ["CLASS_NAMES", "SHAPES", "TEXTURES", "HUE_MODES_DEG", "CLASS_HUE_MODES", "GENERATOR_VERSION",
           "MIN_CLASSES", "SyntheticSpec", "render", "generate"]

# Bump whenever the rendered pixels change for the same spec: the manifest records it, so a tree
# written by an older generator is reported as different instead of silently reused.
GENERATOR_VERSION = 2
_GENERATOR_ID = "ssl_bench.data.synthetic"

SHAPES: tuple[str, ...] = ("star", "disc", "triangle", "square", "cross",
                           "crescent", "heart", "arrow", "ring", "drop")
TEXTURES: tuple[str, ...] = ("striped", "dotted", "checked", "wavy", "ringed",
                             "blotched", "zigzag", "gridded", "spoked", "plain")

# Eight hue modes, evenly spaced on the Lab hue circle (degrees, atan2(b, a)).
HUE_MODES_DEG: tuple[float, ...] = tuple(20.0 + 45.0 * k for k in range(8))

# Classes form a ring: class 2k = (shape k, texture k), class 2k+1 = (shape k, texture k+1), so
# class c shares its shape with one neighbour and its texture with the other.  Edge e joins class e
# and class e+1 (mod 20) and carries a hue mode that both classes use; class c therefore has modes
# (edge c-1, edge c).  The edge modes below were found by a small search so that the 20 mode pairs
# are distinct, each of the 8 modes is used by exactly 4 of the first 16 classes (2-4 of the first
# 10, 4-6 of all 20), and no class uses the same mode twice.
_EDGE_MODES: tuple[int, ...] = (4, 1, 7, 5, 0, 2, 6, 3, 0, 6, 5, 1, 3, 4, 2, 7, 0, 4, 6, 7)
_N_ALL = 2 * len(SHAPES)
CLASS_SHAPE: tuple[int, ...] = tuple(c // 2 for c in range(_N_ALL))
CLASS_TEXTURE: tuple[int, ...] = tuple((c // 2 + c % 2) % len(TEXTURES) for c in range(_N_ALL))
CLASS_HUE_MODES: tuple[tuple[int, int], ...] = tuple(
    (_EDGE_MODES[(c - 1) % _N_ALL], _EDGE_MODES[c]) for c in range(_N_ALL))
CLASS_NAMES: tuple[str, ...] = tuple(
    f"{TEXTURES[CLASS_TEXTURE[c]]}_{SHAPES[CLASS_SHAPE[c]]}" for c in range(_N_ALL))

# Fewer than 10 classes is accepted only so that tests and smoke runs can be tiny; the palette
# overlap that keeps colour from giving the class away is only designed for >= 10 classes.
MIN_CLASSES = 2
_SPLIT_IDS = {"train": 0, "val": 1}
_EXTENSIONS = {"jpeg": ".jpg", "png": ".png"}
_SUPERSAMPLE = 2  # polygon edges are rasterised at 2x and box-filtered: cheap anti-aliasing


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the generated tree (all of it is recorded in manifest.json).

    num_classes: 2..len(CLASS_NAMES) (20); the benchmark default is 16, and the palette overlap is
        designed for >= 10 (values below 10 are for tiny tests only).  The first ``num_classes``
        entries of ``CLASS_NAMES`` are used.
    train_per_class, val_per_class: images per class in each split (>= 1).
    image_size: side of the square images in pixels (32..1024).
    seed: non-negative integer; the whole tree is a pure function of the spec.
    image_format: "jpeg" (files ``*.jpg``) or "png".
    jpeg_quality: JPEG quality 1..100 (4:2:0 chroma subsampling, like most photographs).
    """

    num_classes: int = 16
    train_per_class: int = 400
    val_per_class: int = 100
    image_size: int = 64
    seed: int = 0
    image_format: str = "jpeg"
    jpeg_quality: int = 92

    def __post_init__(self) -> None:
        def need_int(name: str, lo: int, hi: int | None, what: str) -> None:
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise ConfigError(f"SyntheticSpec.{name}: expected an integer {what}, got {v!r}")
            if v < lo or (hi is not None and v > hi):
                raise ConfigError(f"SyntheticSpec.{name}: expected {what}, got {v}")
            # numpy integers would make the manifest unserialisable (and compare unequal as JSON).
            object.__setattr__(self, name, int(v))

        need_int("num_classes", MIN_CLASSES, len(CLASS_NAMES),
                 f"between {MIN_CLASSES} and {len(CLASS_NAMES)} (>= 10 for a meaningful benchmark)")
        need_int("train_per_class", 1, None, ">= 1")
        need_int("val_per_class", 1, None, ">= 1")
        need_int("image_size", 32, 1024, "between 32 and 1024 pixels")
        need_int("seed", 0, None, ">= 0")
        need_int("jpeg_quality", 1, 100, "between 1 and 100")
        if self.image_format not in _EXTENSIONS:
            raise ConfigError(f"SyntheticSpec.image_format: expected one of {sorted(_EXTENSIONS)}, "
                              f"got {self.image_format!r}")

    def count(self, split: str) -> int:
        """Number of images in ``split``."""
        return self.num_classes * (self.train_per_class if _check_split(split) == "train"
                                   else self.val_per_class)


def _check_split(split: str) -> str:
    if split not in _SPLIT_IDS:
        raise ConfigError(f"split: expected one of {sorted(_SPLIT_IDS)}, got {split!r}")
    return split


# ----------------------------------------------------------------------------------- colour maths

_XYZ_TO_RGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                        [-0.9692660, 1.8760108, 0.0415560],
                        [0.0556434, -0.2040259, 1.0572252]])
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def _lab_to_linear_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE Lab (D65) -> linear sRGB, unclipped (out-of-gamut values fall outside [0, 1])."""
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    fy = (L + 16.0) / 116.0
    f = np.stack([fy + a / 500.0, fy, fy - b / 200.0], axis=-1)
    d = 6.0 / 29.0
    xyz = np.where(f > d, f ** 3, 3.0 * d * d * (f - 4.0 / 29.0)) * _WHITE_D65
    return xyz @ _XYZ_TO_RGB.T


def _lab_to_srgb_uint8(lab: np.ndarray) -> np.ndarray:
    rgb = np.clip(_lab_to_linear_rgb(lab), 0.0, 1.0)
    srgb = np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * np.power(rgb, 1.0 / 2.4) - 0.055)
    return np.clip(np.rint(srgb * 255.0), 0, 255).astype(np.uint8)


def _gamut_scale(L_values: Sequence[float], a: float, b: float) -> float:
    """Largest factor (from a short ladder) that brings chroma (a, b) into the sRGB gamut at the
    given lightness levels.  Shrinking chroma keeps the hue exact, whereas per-pixel RGB clipping
    would shift it, blurring the hue modes the colorization target is built on."""
    Ls = np.asarray(L_values, dtype=np.float64)
    for f in (1.0, 0.85, 0.7, 0.55, 0.4, 0.3, 0.2):
        lab = np.stack([Ls, np.full_like(Ls, a * f), np.full_like(Ls, b * f)], axis=-1)
        rgb = _lab_to_linear_rgb(lab)
        if np.all(rgb >= -0.01) and np.all(rgb <= 1.01):
            return f
    return 0.2


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise with feature size ~cell pixels (bicubic upsampling)."""
    gh, gw = int(math.ceil(h / cell)) + 2, int(math.ceil(w / cell)) + 2
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    big = Image.fromarray(coarse).resize((int(round(gw * cell)), int(round(gh * cell))),
                                                   Image.Resampling.BICUBIC)
    arr = np.asarray(big, dtype=np.float32)
    # A random phase (skipping the border cells where bicubic has no support): the noise's variance
    # peaks on the coarse grid's nodes, and a fixed phase would tie those peaks to image positions.
    oy, ox = (int(cell // 2) + rng.integers(0, max(1, int(cell)), size=2)).tolist()
    return arr[oy:oy + h, ox:ox + w] * 1.6


# ------------------------------------------------------------------------------------ shapes

Poly = tuple[np.ndarray, bool]  # (k x 2 vertices, True = filled, False = hole)


def _circle(n: int = 40, r: float = 1.0) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _shape_template(shape: int, rng: np.random.Generator) -> list[Poly]:
    """Unit-size polygons of one shape family, with a little per-instance variation of proportions."""
    name = SHAPES[shape]
    if name == "star":
        k = 5
        inner = rng.uniform(0.38, 0.52)
        t = np.arange(2 * k) * np.pi / k - np.pi / 2
        r = np.where(np.arange(2 * k) % 2 == 0, 1.0, inner)
        return [(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), True)]
    if name == "disc":
        return [(_circle(40), True)]
    if name == "triangle":
        t = np.arange(3) * 2 * np.pi / 3 - np.pi / 2
        return [(np.stack([np.cos(t), np.sin(t)], axis=1), True)]
    if name == "square":
        return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64), True)]
    if name == "cross":
        w = rng.uniform(0.26, 0.36)
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w),
               (-1, w), (-1, -w), (-w, -w)]
        return [(np.array(pts, dtype=np.float64), True)]
    if name == "crescent":
        # Disc of radius 1 minus a disc of radius r2 centred at (d, 0): outer arc, then inner arc.
        r2, d = rng.uniform(0.78, 0.9), rng.uniform(0.4, 0.55)
        xi = (1.0 - r2 * r2 + d * d) / (2.0 * d)
        yi = math.sqrt(max(1.0 - xi * xi, 1e-6))
        a0 = math.atan2(yi, xi)
        outer = np.linspace(a0, 2 * np.pi - a0, 28)
        b0 = math.atan2(yi, xi - d)
        inner = np.linspace(2 * np.pi - b0, b0, 22)
        pts = np.concatenate([np.stack([np.cos(outer), np.sin(outer)], axis=1),
                              np.stack([d + r2 * np.cos(inner), r2 * np.sin(inner)], axis=1)])
        return [(pts, True)]
    if name == "heart":
        t = np.linspace(0.0, 2.0 * np.pi, 44, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [(np.stack([x, y], axis=1) / 16.0, True)]
    if name == "arrow":
        sw, hw, hl = rng.uniform(0.16, 0.24), rng.uniform(0.5, 0.65), rng.uniform(0.7, 0.95)
        x0 = 1.0 - hl
        pts = [(-1, -sw), (x0, -sw), (x0, -hw), (1, 0), (x0, hw), (x0, sw), (-1, sw)]
        return [(np.array(pts, dtype=np.float64), True)]
    if name == "ring":
        return [(_circle(40), True), (_circle(32, rng.uniform(0.48, 0.62)), False)]
    if name == "drop":
        m = rng.uniform(0.9, 1.4)
        t = np.linspace(0.0, 2.0 * np.pi, 40, endpoint=False)
        return [(np.stack([-np.cos(t), np.sin(t) * np.sin(t / 2) ** m], axis=1), True)]
    raise AssertionError(name)


def _blob_template(rng: np.random.Generator) -> list[Poly]:
    """An irregular rounded blob (the neutral "rock" distractor)."""
    pts = _circle(32)
    th = np.arctan2(pts[:, 1], pts[:, 0])
    r = 1.0 + sum(rng.uniform(0.05, 0.18) * np.sin(k * th + rng.uniform(0, 2 * np.pi))
                  for k in (2, 3, 4))
    return [(pts * r[:, None], True)]


def _poly_area_centroid(pts: np.ndarray) -> tuple[float, np.ndarray]:
    x, y = pts[:, 0], pts[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = 0.5 * cross.sum()
    if abs(area) < 1e-9:
        return 0.0, pts.mean(axis=0)
    cx = ((x + xn) * cross).sum() / (6.0 * area)
    cy = ((y + yn) * cross).sum() / (6.0 * area)
    return abs(area), np.array([cx, cy])


def _normalise(polys: list[Poly]) -> list[Poly]:
    """Centre on the area centroid and scale to the area of the unit disc, so that the object's
    size parameter means the same for every shape family (area must not identify the class)."""
    area_out, centroid = _poly_area_centroid(polys[0][0])
    area = area_out - sum(_poly_area_centroid(p)[0] for p, fill in polys[1:] if not fill)
    k = math.sqrt(math.pi / max(area, 1e-6))
    return [((p - centroid) * k, fill) for p, fill in polys]


def _deform(polys: list[Poly], rng: np.random.Generator, strength: float) -> list[Poly]:
    """Smooth radial wobble plus an area-preserving aspect change: the same field for outline and
    hole, so holes stay inside."""
    coefs = [(k, rng.uniform(0.0, strength), rng.uniform(0, 2 * np.pi)) for k in (2, 3)]
    aspect = math.exp(rng.uniform(-0.28, 0.28))
    out = []
    for p, fill in polys:
        th = np.arctan2(p[:, 1], p[:, 0])
        r = 1.0 + sum(a * np.sin(k * th + ph) for k, a, ph in coefs)
        q = p * r[:, None]
        out.append((q * np.array([aspect, 1.0 / aspect]), fill))
    return out


# ------------------------------------------------------------------------------------ textures

def _soft(x: np.ndarray, k: float = 2.5) -> np.ndarray:
    """Squarish wave in [0, 1] with soft edges (hard edges would alias at 64 px)."""
    return 0.5 + 0.5 * np.tanh(k * x) / math.tanh(k)


def _texture(tex: int, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, s: float) -> np.ndarray:
    """Pattern in [0, 1] over object-frame coordinates (u, v), in units of 1/64 of the image side
    (s pixels), so a pattern looks the same at every image size and rotates with the object."""
    name = TEXTURES[tex]
    ph = rng.uniform(0.0, 2.0 * np.pi)
    if name == "striped":
        T = rng.uniform(4.5, 6.5)
        return _soft(np.sin(2 * np.pi * u / T + ph))
    if name == "dotted":
        T = rng.uniform(6.0, 8.0)
        rad = rng.uniform(0.27, 0.35) * T
        o = rng.uniform(0, T, size=2)
        du = np.mod(u + o[0], T) - T / 2
        dv = np.mod(v + o[1], T) - T / 2
        return np.clip((rad - np.hypot(du, dv)) / 0.9 + 0.5, 0.0, 1.0)
    if name == "checked":
        T = rng.uniform(4.0, 5.5)
        o = rng.uniform(0, 2 * np.pi, size=2)
        return _soft(2.0 * np.sin(np.pi * u / T + o[0]) * np.sin(np.pi * v / T + o[1]))
    if name == "wavy":
        T, A, Tw = rng.uniform(4.5, 6.5), rng.uniform(1.5, 2.5), rng.uniform(9.0, 14.0)
        return _soft(np.sin(2 * np.pi * (u + A * np.sin(2 * np.pi * v / Tw)) / T + ph))
    if name == "ringed":
        T = rng.uniform(4.5, 6.5)
        o = rng.uniform(-2.0, 2.0, size=2)
        return _soft(np.sin(2 * np.pi * np.hypot(u - o[0], v - o[1]) / T + ph))
    if name == "blotched":
        # Random blotches need no object frame: the noise is drawn on the pixel grid.
        h, w = u.shape
        return _soft(1.2 * _smooth_noise(rng, h, w, rng.uniform(4.5, 6.0) * s))
    if name == "zigzag":
        T, A, Tz = rng.uniform(4.5, 6.5), rng.uniform(1.5, 2.5), rng.uniform(5.0, 8.0)
        tri = 4.0 * np.abs(np.mod(v / Tz, 1.0) - 0.5) - 1.0
        return _soft(np.sin(2 * np.pi * (u + A * tri) / T + ph))
    if name == "gridded":
        T, w = rng.uniform(5.5, 7.5), rng.uniform(0.7, 1.0)
        o = rng.uniform(0, T, size=2)
        du = np.abs(np.mod(u + o[0], T) - T / 2)
        dv = np.abs(np.mod(v + o[1], T) - T / 2)
        return np.maximum(np.exp(-(du / w) ** 2), np.exp(-(dv / w) ** 2))
    if name == "spoked":
        n = int(rng.integers(6, 10))
        o = rng.uniform(-1.5, 1.5, size=2)
        return _soft(np.sin(n * np.arctan2(v - o[1], u - o[0]) + ph))
    if name == "plain":
        return np.full(u.shape, 0.5)
    raise AssertionError(name)


# ------------------------------------------------------------------------------------ objects

@dataclass
class _Object:
    polys: list[Poly]          # in pixel coordinates
    cx: float
    cy: float
    angle: float
    radius: float              # equivalent-disc radius in pixels
    texture: int
    L_base: float
    amplitude: float           # signed: the sign is the texture's polarity
    shading: tuple[float, float]
    a: float
    b: float
    paint_seed: int            # texture parameters are drawn from this stream when painted
    rim_L: float | None        # lightness of the object's outline band (None: no outline)


def _make_object(rng: np.random.Generator, n: int, cls: int | None, radius: float,
                 cx: float, cy: float) -> _Object:
    """Sample one object; cls=None makes a neutral (grey/brown, low-chroma) blob."""
    if cls is None:
        polys = _normalise(_blob_template(rng))
        texture = TEXTURES.index("blotched")
        L_base = rng.uniform(30.0, 75.0)
        amplitude = rng.uniform(3.0, 8.0) * rng.choice([-1.0, 1.0])
        hue = rng.uniform(0.0, 360.0)
        chroma = rng.uniform(0.0, 9.0)
    else:
        polys = _normalise(_shape_template(CLASS_SHAPE[cls], rng))
        texture = CLASS_TEXTURE[cls]
        # Wide base-lightness range + random contrast and polarity: luminance says nothing about
        # the class, only the *pattern* of luminance does.
        L_base = rng.uniform(36.0, 76.0)
        amplitude = rng.uniform(7.0, 18.0) * rng.choice([-1.0, 1.0])
        mode = CLASS_HUE_MODES[cls][int(rng.integers(2))]
        hue = HUE_MODES_DEG[mode] + rng.normal(0.0, 6.0)
        chroma = rng.uniform(30.0, 60.0)
    polys = _deform(polys, rng, 0.1 if cls is not None else 0.05)
    # Objects stand upright (within +-23 degrees), as things in photographs do: their parts sit in a
    # fixed arrangement, so a patch of an object tells where its neighbouring parts are.
    angle = rng.uniform(-0.4, 0.4) if cls is not None else rng.uniform(0.0, 2.0 * np.pi)
    g = rng.uniform(0.0, 7.0)
    phi = rng.uniform(0.0, 2.0 * np.pi)
    a = chroma * math.cos(math.radians(hue))
    b = chroma * math.sin(math.radians(hue))
    f = _gamut_scale([L_base - 0.5 * abs(amplitude), L_base, L_base + 0.5 * abs(amplitude)], a, b)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pix = [((p @ rot.T) * radius + np.array([cx, cy]), fill) for p, fill in polys]
    # Class objects have an outline band 25-35 units darker (or, for dark objects, lighter) than
    # their body: a part that every object has, at a fixed place, and that shows in any one channel.
    rim = rng.uniform(25.0, 35.0)
    rim_L = None if cls is None else (L_base - rim if L_base >= 50.0 else L_base + rim)
    return _Object(pix, cx, cy, angle, radius, texture, L_base, amplitude,
                   (g * math.cos(phi), g * math.sin(phi)), a * f, b * f,
                   int(rng.integers(0, 2**63)), rim_L)


def _rasterise(obj: _Object, n: int) -> np.ndarray:
    """Coverage in [0, 1] (n x n float32), anti-aliased by supersampling."""
    ss = _SUPERSAMPLE
    im = Image.new("L", (n * ss, n * ss), 0)
    draw = ImageDraw.Draw(im)
    for p, fill in obj.polys:
        q = p * ss
        draw.polygon([(float(x), float(y)) for x, y in q], fill=255 if fill else 0)
    return np.asarray(im.reduce(ss), dtype=np.float32) / 255.0


def _outline(alpha: np.ndarray, width: int) -> np.ndarray:
    """The band within ``width`` pixels inside the edge of a coverage map (n x n in [0, 1] -> same).
    The object goes on beyond the image border, so the border itself gets no band."""
    pad = width + 1
    im = Image.fromarray(np.pad(np.rint(alpha * 255.0), pad, mode="edge").astype(np.uint8))
    inner = np.asarray(im.filter(ImageFilter.MinFilter(2 * width + 1)), dtype=np.float64)[pad:-pad, pad:-pad]
    return np.clip(alpha - inner / 255.0, 0.0, 1.0)


def _paint(obj: _Object, rng: np.random.Generator, canvas: np.ndarray, alpha: np.ndarray,
           s: float) -> None:
    """Alpha-composite the object's Lab field onto canvas (in place), inside its bounding box."""
    ys, xs = np.nonzero(alpha > 0)
    if ys.size == 0:
        return
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy = (xx + 0.5 - obj.cx) / s, (yy + 0.5 - obj.cy) / s
    ca, sa = math.cos(obj.angle), math.sin(obj.angle)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy
    p = _texture(obj.texture, rng, u, v, s)
    r64 = obj.radius / s
    L = obj.L_base + obj.amplitude * (2.0 * p - 1.0) + (obj.shading[0] * u + obj.shading[1] * v) / r64
    field = np.empty((y1 - y0, x1 - x0, 3))
    if obj.rim_L is not None:
        band = _outline(alpha, max(1, int(round(1.5 * s))))[y0:y1, x0:x1]
        L = L * (1.0 - band) + obj.rim_L * band
    field[..., 0] = np.clip(L, 4.0, 97.0)
    field[..., 1] = obj.a
    field[..., 2] = obj.b
    al = alpha[y0:y1, x0:x1, None]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1.0 - al) + field * al


# ------------------------------------------------------------------------------------ background

def _background(rng: np.random.Generator, n: int, s: float, object_L: float) -> np.ndarray:
    """A textured, cluttered ground whose statistics are the same at every position (n x n x 3 Lab).

    Nothing in it says where up is: the lightness and colour fields are stationary noise drawn with
    a random phase, and the clutter (pebbles and twigs) is placed uniformly at random orientations.
    Its hue is drawn per image, independently of the class.  Its mean lightness lies 12-30 units
    from the main object's base lightness ``object_L``, so the outline shows in any one channel."""
    L0 = object_L + rng.uniform(12.0, 30.0) * rng.choice([-1.0, 1.0])
    if not 20.0 <= L0 <= 85.0:
        L0 = 2.0 * object_L - L0
    hue0, chroma0 = rng.uniform(0.0, 360.0), rng.uniform(2.0, 14.0)
    L = (L0 + rng.uniform(2.0, 5.0) * _smooth_noise(rng, n, n, rng.uniform(10.0, 18.0) * s)
         + rng.uniform(1.0, 2.5) * _smooth_noise(rng, n, n, rng.uniform(2.5, 4.0) * s))
    hue = np.radians(hue0 + 20.0 * _smooth_noise(rng, n, n, rng.uniform(12.0, 20.0) * s))
    chroma = np.clip(chroma0 * (1.0 + 0.4 * _smooth_noise(rng, n, n, rng.uniform(8.0, 14.0) * s)), 0.0, None)
    L = L + _clutter(rng, n, s)
    lab = np.empty((n, n, 3))
    lab[..., 0] = np.clip(L, 5.0, 95.0)
    lab[..., 1] = chroma * np.cos(hue)
    lab[..., 2] = chroma * np.sin(hue)
    return lab


def _clutter(rng: np.random.Generator, n: int, s: float) -> np.ndarray:
    """Lightness offsets (n x n) of 3-10 small pebbles and twigs, uniform in position and orientation."""
    ss = _SUPERSAMPLE
    layers = {1.0: Image.new("L", (n * ss, n * ss), 0), -1.0: Image.new("L", (n * ss, n * ss), 0)}
    for _ in range(int(rng.integers(3, 11))):
        x, y = rng.uniform(-4.0 * s, n + 4.0 * s, size=2) * ss
        sign = float(rng.choice([-1.0, 1.0]))
        draw = ImageDraw.Draw(layers[sign])
        if rng.random() < 0.5:  # twig: a thin segment
            half, th = rng.uniform(3.0, 8.0) * s * ss, rng.uniform(0.0, np.pi)
            dx, dy = half * math.cos(th), half * math.sin(th)
            draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=255, width=max(1, int(round(0.8 * s * ss))))
        else:  # pebble: a small ellipse
            rx, ry = rng.uniform(1.0, 2.5, size=2) * s * ss
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=255)
    amp = rng.uniform(6.0, 14.0)
    return amp * sum(sign * np.asarray(im.reduce(ss), dtype=np.float64) / 255.0 for sign, im in layers.items())


# ------------------------------------------------------------------------------------ render

def _rng_for(spec: SyntheticSpec, split: str, index: int) -> np.random.Generator:
    # One independent stream per image: results do not depend on rendering order or worker count.
    return np.random.default_rng(np.random.SeedSequence([int(spec.seed), _SPLIT_IDS[split], int(index)]))


def render(spec: SyntheticSpec, split: str, index: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Render image ``index`` of ``split`` ("train" or "val").  Deterministic.

    Any index >= 0 is accepted (indices beyond the split's size are just more samples of the same
    distribution); the label is ``index % spec.num_classes``.

    Returns (image uint8 H x W x 3 RGB, class label, main-object mask bool H x W), where the mask is
    the main object's *visible* pixels (after occlusion by distractors and the image border).
    """
    _check_split(split)
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or index < 0:
        raise ValueError(f"index: expected a non-negative integer, got {index!r}")
    n = spec.image_size
    s = n / 64.0
    label = int(index) % spec.num_classes
    rng = _rng_for(spec, split, int(index))
    # The main object is large and near the centre, as in object-centric photographs: a patch grid
    # laid over the image then sees its parts and its outline on every side.
    r_main = rng.uniform(0.24, 0.36) * n
    main = _make_object(rng, n, label, r_main, n * (0.5 + rng.uniform(-0.16, 0.16)),
                        n * (0.5 + rng.uniform(-0.16, 0.16)))
    canvas = _background(rng, n, s, main.L_base)
    distractors: list[tuple[_Object, bool]] = []
    for _ in range(int(rng.integers(0, 4))):
        if rng.random() < 0.6 and spec.num_classes > 1:
            other = int(rng.integers(spec.num_classes - 1))
            cls: int | None = other + (other >= label)  # any class but the main one
        else:
            cls = None
        r = max(rng.uniform(0.3, 0.6) * r_main, 0.06 * n)
        obj = _make_object(rng, n, cls, r, rng.uniform(0, n), rng.uniform(0, n))
        distractors.append((obj, bool(rng.random() < 0.5)))  # True = in front of the main object

    a_main = _rasterise(main, n)
    full_area = float(a_main.sum())
    visible = a_main.copy()
    behind: list[tuple[_Object, np.ndarray]] = []
    front: list[tuple[_Object, np.ndarray]] = []
    for obj, in_front in distractors:
        a = _rasterise(obj, n)
        if in_front:
            # Partial occlusion only: the main object must stay recognisable and the largest.
            new_visible = visible * (1.0 - a)
            if new_visible.sum() < 0.6 * full_area or a.sum() > 0.5 * new_visible.sum():
                continue
            visible = new_visible
            front.append((obj, a))
        else:
            behind.append((obj, a))

    # Each object paints from its own stream, so dropping a distractor does not change the others.
    for obj, a in behind:
        _paint(obj, _object_rng(obj), canvas, a, s)
    _paint(main, _object_rng(main), canvas, a_main, s)
    for obj, a in front:
        _paint(obj, _object_rng(obj), canvas, a, s)

    canvas[..., 0] += rng.normal(0.0, 0.8, size=(n, n))  # faint sensor grain
    return _lab_to_srgb_uint8(canvas), label, visible >= 0.5


def _object_rng(obj: _Object) -> np.random.Generator:
    return np.random.default_rng(obj.paint_seed)


# ------------------------------------------------------------------------------------ generate

def _manifest(spec: SyntheticSpec) -> dict[str, Any]:
    names = list(CLASS_NAMES[:spec.num_classes])
    return {
        "generator": _GENERATOR_ID,
        "version": GENERATOR_VERSION,
        "spec": asdict(spec),
        "class_names": names,
        "classes": [{"name": CLASS_NAMES[c], "label": c, "shape": SHAPES[CLASS_SHAPE[c]],
                     "texture": TEXTURES[CLASS_TEXTURE[c]],
                     "hue_modes_deg": [HUE_MODES_DEG[m] for m in CLASS_HUE_MODES[c]]}
                    for c in range(spec.num_classes)],
        "counts": {split: {"images": spec.count(split),
                           "per_class": {name: spec.count(split) // spec.num_classes for name in names}}
                   for split in ("train", "val")},
        "file_extension": _EXTENSIONS[spec.image_format],
    }


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def _describe_existing(out: Path, manifest: dict[str, Any]) -> str | None:
    """None when ``out`` is a complete tree for this manifest; otherwise what is wrong with it."""
    if not out.is_dir():
        return "exists and is not a directory"
    mpath = out / "manifest.json"
    try:
        old = json.loads(mpath.read_text())
    except FileNotFoundError:
        return "exists but is not a generated synthetic tree (no manifest.json)"
    except (OSError, ValueError) as e:
        return f"exists but its manifest.json is unreadable ({e})"
    if not isinstance(old, dict) or old.get("generator") != _GENERATOR_ID:
        return "exists but its manifest.json was not written by ssl_bench.data.synthetic"
    a, b = _flatten(old), _flatten(manifest)
    diffs = [f"{k}: existing {a.get(k, '<missing>')!r}, requested {b.get(k, '<missing>')!r}"
             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diffs:
        more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
        return "holds a different synthetic data set: " + "; ".join(diffs[:4]) + more
    ext = manifest["file_extension"]
    for split in ("train", "val"):
        for name, k in manifest["counts"][split]["per_class"].items():
            d = out / split / name
            have = sum(1 for e in os.scandir(d) if e.name.endswith(ext)) if d.is_dir() else 0
            if have != k:
                return f"is incomplete: {split}/{name} has {have} files, expected {k}"
    return None


def _write_chunk(args: tuple[SyntheticSpec, str, str, list[int]]) -> int:
    spec, root, split, indices = args
    ext = _EXTENSIONS[spec.image_format]
    for i in indices:
        img, label, _ = render(spec, split, i)
        path = os.path.join(root, split, CLASS_NAMES[label], f"{i:06d}{ext}")
        im = Image.fromarray(img)
        if spec.image_format == "jpeg":
            im.save(path, format="JPEG", quality=spec.jpeg_quality, subsampling=2, optimize=False)
        else:
            im.save(path, format="PNG", compress_level=6)
    return len(indices)


def _chunks(spec: SyntheticSpec, root: Path, size: int) -> Iterator[tuple[SyntheticSpec, str, str, list[int]]]:
    for split in ("train", "val"):
        total = spec.count(split)
        for lo in range(0, total, size):
            yield spec, str(root), split, list(range(lo, min(lo + size, total)))


def _install(tmp: Path, out: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    """Move the finished tree into place.  A concurrent writer of the same spec may win the race;
    then its tree is as good as ours."""
    if out.exists() or out.is_symlink():
        if _describe_existing(out, manifest) is None:
            shutil.rmtree(tmp)
            return
        if not overwrite:
            raise OutputExistsError(f"{out}: appeared while generating; refusing to replace it "
                                    "(pass overwrite=True)")
        old = out.parent / f"{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
        return
    try:
        os.replace(tmp, out)
    except OSError:
        if out.exists() and _describe_existing(out, manifest) is None:
            shutil.rmtree(tmp)
            return
        raise


def generate(out: str | Path, spec: SyntheticSpec = SyntheticSpec(), *, workers: int | None = None,
             overwrite: bool = False, progress: bool = False) -> Path:
    """Write the synthetic ImageFolder tree for ``spec`` to ``out`` and return ``out`` as a Path.

    Layout: ``out/train/<class>/<index>.jpg``, ``out/val/<class>/<index>.jpg`` (``.png`` with
    ``image_format="png"``) and ``out/manifest.json`` (generator version, spec, class names and
    structure, counts).  The tree is rendered into ``out.tmp-<pid>`` and moved into place at the
    end, so a crash never leaves a half-written ``out``.

    If ``out`` already holds a complete tree with an identical manifest it is returned untouched
    (also with ``overwrite=True``).  If it holds anything else (another spec, an incomplete tree, a
    folder that was not generated here) a FileExistsError says what differs, unless
    ``overwrite=True``, which replaces it.

    workers: processes to render with (default min(2, cpu count)); the files are byte-identical
    for any value.  progress: print progress lines to stderr.
    """
    workers = _check_generate_args(spec, workers)
    out = Path(out).expanduser()
    manifest = _manifest(spec)
    if _already_there(out, manifest, overwrite):
        return out
    tmp = _fresh_tmp(out)
    total = spec.count("train") + spec.count("val")
    t0 = time.monotonic()
    try:
        _write_tree(tmp, spec, manifest, workers, _progress_reporter(total, progress))
        _install(tmp, out, manifest, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(f"synthetic: wrote {total} images to {out} in {time.monotonic() - t0:.1f} s",
              file=sys.stderr, flush=True)
    return out


def _check_generate_args(spec: SyntheticSpec, workers: int | None) -> int:
    """Validate ``generate``'s spec and worker count; returns the worker count to use."""
    if not isinstance(spec, SyntheticSpec):
        raise TypeError(f"spec: expected a SyntheticSpec, got {type(spec).__name__}")
    SyntheticSpec.__post_init__(spec)  # guards against specs mutated with object.__setattr__
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: expected a positive integer, got {workers!r}")
    return workers


def _already_there(out: Path, manifest: dict[str, Any], overwrite: bool) -> bool:
    """True when ``out`` already holds this tree.  Anything else there raises FileExistsError
    unless ``overwrite``."""
    if out.exists() or out.is_symlink():
        problem = _describe_existing(out, manifest)
        if problem is None:
            return True
        if not overwrite:
            raise OutputExistsError(f"{out} {problem}; pass overwrite=True to replace it")
    return False


def _fresh_tmp(out: Path) -> Path:
    """The (absent) sibling folder that ``out`` is rendered into."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)  # left over by a crashed run of a process with our pid
    return tmp


def _write_tree(tmp: Path, spec: SyntheticSpec, manifest: dict[str, Any], workers: int,
                report: Callable[[int], None]) -> None:
    """Render every image of ``spec`` into ``tmp``, then its manifest."""
    for split in ("train", "val"):
        for name in manifest["class_names"]:
            (tmp / split / name).mkdir(parents=True)
    total = spec.count("train") + spec.count("val")
    chunk = max(16, min(256, total // (8 * workers) + 1))
    jobs = list(_chunks(spec, tmp, chunk))
    done = 0
    if workers == 1:
        for job in jobs:
            done += _write_chunk(job)
            report(done)
    else:
        # spawn, not fork: the caller may hold threads (torch, loaders) that fork would copy.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(processes=workers) as pool:
            for k in pool.imap_unordered(_write_chunk, jobs):
                done += k
                report(done)
    # The manifest is written last: its presence marks a complete tree.
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _progress_reporter(total: int, enabled: bool) -> Callable[[int], None]:
    step = max(1, total // 10)
    state = {"next": step}

    def report(done: int) -> None:
        if enabled and (done >= state["next"] or done == total):
            print(f"synthetic: {done}/{total} images", file=sys.stderr, flush=True)
            state["next"] = done + step

    return report
