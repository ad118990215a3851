"""Shapes, textures and colours drawn by the synthetic data generators (the classification set
of pre-training and the COCO-format scenes of transfer)."""
from __future__ import annotations

import colorsys
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "star", "bar")
Point = tuple[float, float]


def polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[Point]:
    """The outline of `shape` (every shape but the ring, which has a hole) centred at (cx, cy)
    with radius r, rotated by `angle`."""
    def ring(n: int, radius: float, phase: float = 0.0) -> list[Point]:
        return [(cx + radius * math.cos(angle + phase + 2 * math.pi * k / n),
                 cy + radius * math.sin(angle + phase + 2 * math.pi * k / n)) for k in range(n)]

    def rotated(points: Sequence[Point]) -> list[Point]:
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + c * dx - s * dy, cy + s * dx + c * dy) for dx, dy in points]

    if shape == "circle":
        return ring(48, r)
    if shape == "square":
        return ring(4, r, math.pi / 4)
    if shape == "triangle":
        return ring(3, r)
    if shape == "diamond":
        return [(cx + (x - cx) * (1.0 if i % 2 == 0 else 0.55),
                 cy + (y - cy) * (1.0 if i % 2 == 0 else 0.55))
                for i, (x, y) in enumerate(ring(4, r))]
    if shape == "star":
        outer, inner = ring(5, r), ring(5, 0.45 * r, math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "bar":
        return rotated([(-r, -0.3 * r), (r, -0.3 * r), (r, 0.3 * r), (-r, 0.3 * r)])
    if shape == "cross":
        a, b = 0.3 * r, r
        return rotated([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b),
                        (-a, a), (-b, a), (-b, -a), (-a, -a)])
    raise ValueError(f"{shape} has no polygon outline")


def shape_mask(shape: str, size: int | tuple[int, int], cx: float, cy: float, r: float,
               angle: float) -> np.ndarray:
    """A boolean mask [height, width] of `shape`; `size` is a side or (width, height)."""
    width, height = (size, size) if isinstance(size, int) else size
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if shape in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if shape == "ring":
            draw.ellipse((cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r), fill=0)
    else:
        draw.polygon(polygon(shape, cx, cy, r, angle), fill=255)
    return np.asarray(canvas) > 127


def texture_mask(fill: str, size: int | tuple[int, int], rng: np.random.Generator,
                 r: float) -> np.ndarray:
    """solid, stripes or dots at a random angle and a period proportional to r."""
    width, height = (size, size) if isinstance(size, int) else size
    if fill == "solid":
        return np.ones((height, width), dtype=bool)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = max(3.0, r / rng.uniform(1.8, 2.6))
    theta = rng.uniform(0, math.pi)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    if fill == "stripes":
        return (u % period) < period / 2
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    du, dv = (u % period) - period / 2, (v % period) - period / 2
    return du * du + dv * dv < (0.3 * period) ** 2


def hsv(h: float, sat: float, val: float) -> np.ndarray:
    """An RGB colour on the 0-255 scale."""
    return 255 * np.asarray(colorsys.hsv_to_rgb(h % 1.0, sat, val))


def gradient(width: int, height: int, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """A vertical colour gradient, float [height, width, 3]."""
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    return np.broadcast_to((1 - t) * top + t * bottom, (height, width, 3)).copy()
