"""Pictures made in code, and PixMix's rule for mixing one into an image: what PixMix training
(:mod:`edgeml.model.pixmix`) and the fine-tune's outliers (:mod:`edgeml.model.outliers`) share, kept apart
from either so that a change to one re-runs only the stages that use it.

The mixing rule follows the official PixMix code (github.com/andyzoujm/pixmix, commit f867e87:
pixmix_utils.py ``get_ab``, ``add``, ``multiply``). The pictures are iterated-function-system fractals
(chaos game), oriented gratings and 1/f^alpha spectral patterns, all spatially smooth, made from a seed:
none is i.i.d. noise, nor any image set the OOD evaluation tests on.
"""

from __future__ import annotations

import numpy as np
import torch

SIZE = 32
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights of R, G, B, as Pillow's convert("L")


# ---- the mixing rule (pixmix_utils.py get_ab / add / multiply) ----

def _beta(n: int, alpha: float, beta: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Beta(alpha, 1) = U^(1/alpha) and Beta(1, beta) = 1 - U^(1/beta) by inversion (one of the two is 1)."""
    u = torch.rand(n, generator=g, device=device)
    return u ** (1 / alpha) if beta == 1 else 1 - u ** (1 / beta)


def mix(mixed: torch.Tensor, other: torch.Tensor, beta: float, g: torch.Generator) -> torch.Tensor:
    """One round of ``add`` or ``multiply`` per image, with the official (a, b), clipped to [0, 1]."""
    n, device = len(mixed), mixed.device
    first = torch.rand(n, generator=g, device=device) < 0.5
    a = torch.where(first, _beta(n, beta, 1, g, device), 1 + _beta(n, 1, beta, g, device)).view(-1, 1, 1, 1)
    b = torch.where(first, _beta(n, 1, beta, g, device), -_beta(n, 1, beta, g, device)).view(-1, 1, 1, 1)
    added = (a * (mixed * 2 - 1) + b * (other * 2 - 1) + 1) / 2
    multiplied = (mixed * 2) ** a * (other * 2).clamp_min(1e-37) ** b / 2
    use_add = (torch.rand(n, generator=g, device=device) < 0.5).view(-1, 1, 1, 1)
    return torch.where(use_add, added, multiplied).clamp(0, 1)


# ---- mixing pictures, generated from a seed ----

def _normalise(pictures: np.ndarray) -> np.ndarray:
    """Each picture stretched to 0..255 (uint8)."""
    low = pictures.min(axis=(1, 2, 3), keepdims=True)
    high = pictures.max(axis=(1, 2, 3), keepdims=True)
    return np.round((pictures - low) / np.maximum(high - low, 1e-9) * 255).astype(np.uint8)


def _colourise(fields: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scalar fields in [0, 1] (n, H, W) -> RGB pictures blending two random colours."""
    low, high = rng.uniform(0, 1, (2, len(fields), 3, 1, 1))
    return low + (high - low) * fields[:, None]


def _blur(fields: np.ndarray) -> np.ndarray:
    """A 3x3 box blur (edge-replicated), so fractal point densities are smooth surfaces."""
    padded = np.pad(fields, ((0, 0), (1, 1), (1, 1)), mode="edge")
    return sum(padded[:, i : i + SIZE, j : j + SIZE] for i in range(3) for j in range(3)) / 9


def _ifs_cells(n: int, rng: np.random.Generator, chains: int, steps: int, burn_in: int) -> np.ndarray:
    """The chaos game of n random IFS (Barnsley): 2-4 contractive affine maps ``R(t1) diag(s) R(t2) p + b``,
    singular values in [0.3, 0.8], each chosen with probability proportional to its |det|. Returns the
    flat cell index (in an n x 32 x 32 grid) of every point visited after ``burn_in`` steps."""
    maps = 4
    count = rng.integers(2, maps + 1, n)
    t1, t2 = rng.uniform(0, 2 * np.pi, (2, n, maps))
    s = rng.uniform(0.3, 0.8, (n, maps, 2)) * rng.choice([-1.0, 1.0], (n, maps, 2))
    rot = lambda t: np.stack([np.stack([np.cos(t), -np.sin(t)], -1), np.stack([np.sin(t), np.cos(t)], -1)], -2)  # noqa: E731
    a = rot(t1) @ (s[..., :, None] * rot(t2))  # (n, maps, 2, 2)
    b = rng.uniform(-1, 1, (n, maps, 2))
    weight = np.abs(s[..., 0] * s[..., 1]) * (np.arange(maps) < count[:, None])
    cumulative = np.cumsum(weight / weight.sum(1, keepdims=True), 1)
    points = rng.uniform(-1, 1, (n, chains, 2))
    visited = []
    rows = np.arange(n)[:, None]
    for step in range(steps):
        pick = np.minimum((rng.uniform(0, 1, (n, chains, 1)) > cumulative[:, None]).sum(-1), maps - 1)
        points = np.einsum("ncij,ncj->nci", a[rows, pick], points) + b[rows, pick]
        if step >= burn_in:
            visited.append(points)
    cloud = np.concatenate(visited, 1)  # (n, points, 2)
    low, high = np.percentile(cloud, 1, axis=1, keepdims=True), np.percentile(cloud, 99, axis=1, keepdims=True)
    cells = np.clip(((cloud - low) / np.maximum(high - low, 1e-9) * SIZE).astype(int), 0, SIZE - 1)
    return (np.arange(n)[:, None] * SIZE * SIZE + cells[..., 1] * SIZE + cells[..., 0]).ravel()


def fractals(n: int, rng: np.random.Generator, chains: int = 256, steps: int = 64, burn_in: int = 8) -> np.ndarray:
    """IFS fractals: the chaos game's (:func:`_ifs_cells`) log point density, blurred and coloured:
    smooth surfaces. (n, 3, H, W) floats."""
    density = np.log1p(np.bincount(_ifs_cells(n, rng, chains, steps, burn_in), minlength=n * SIZE * SIZE).reshape(n, SIZE, SIZE))
    density = _blur(_blur(density))
    return _colourise(density / np.maximum(density.max(axis=(1, 2), keepdims=True), 1e-9), rng)


def sketches(n: int, rng: np.random.Generator, chains: int = 16, steps: int = 28, burn_in: int = 8) -> np.ndarray:
    """IFS fractals rendered as FractalDB renders them (Kataoka et al., "Pre-training without Natural
    Images", ACCV 2020): the visited points drawn sharp in one colour on a plain ground of another, half
    of them bold (each point a plus of 5 pixels); figure and ground differ by at least 0.3 in luma. Unlike
    :func:`fractals`, a figure on an empty ground, the layout of no CIFAR-10 image. (n, H, W, 3) uint8."""
    drawn = np.bincount(_ifs_cells(n, rng, chains, steps, burn_in), minlength=n * SIZE * SIZE).reshape(n, SIZE, SIZE) > 0
    bold = rng.uniform(0, 1, n) < 0.5
    padded = np.pad(drawn, ((0, 0), (1, 1), (1, 1)))
    dilated = np.any([padded[:, i : i + SIZE, j : j + SIZE] for i, j in ((1, 1), (0, 1), (2, 1), (1, 0), (1, 2))], axis=0)
    drawn = np.where(bold[:, None, None], dilated, drawn)
    ground, figure = rng.uniform(0, 1, (2, n, 3))
    faint = np.abs((figure - ground) @ LUMA) < 0.3
    while faint.any():  # redrawn until every figure stands out (any ground has colours 0.3 of luma away)
        figure[faint] = rng.uniform(0, 1, (faint.sum(), 3))
        faint = np.abs((figure - ground) @ LUMA) < 0.3
    image = np.where(drawn[..., None], figure[:, None, None], ground[:, None, None])
    return np.round(image * 255).astype(np.uint8)


def gratings(n: int, rng: np.random.Generator) -> np.ndarray:
    """Sums of 1-3 sinusoidal gratings (random orientation, 1-4 cycles per picture, phase), per
    channel: smooth stripe and plaid patterns (periods of 8+ pixels)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = np.zeros((n, 3, SIZE, SIZE))
    for k in range(3):
        present = (rng.integers(1, 4, n) > k)[:, None, None, None]
        angle, cycles, phase = rng.uniform(0, np.pi, n), rng.uniform(1, 4, n), rng.uniform(0, 2 * np.pi, (n, 3))
        wave = 2 * np.pi * cycles[:, None, None] * (np.cos(angle)[:, None, None] * x + np.sin(angle)[:, None, None] * y)
        out += present * np.sin(wave[:, None] + phase[:, :, None, None])
    return out


def spectral(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f^alpha patterns (alpha in [2, 3], the statistics of natural images and smoother): random
    phases under an amplitude spectrum falling as 1/f^alpha, per channel."""
    fy, fx = np.meshgrid(np.fft.fftfreq(SIZE), np.fft.rfftfreq(SIZE), indexing="ij")
    f = np.hypot(fy, fx)
    f[0, 0] = np.inf  # no DC term
    alpha = rng.uniform(2, 3, (n, 1, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 3) + f.shape)
    return np.fft.irfft2(f ** -alpha * np.exp(1j * phase), s=(SIZE, SIZE))


def mixing_pictures(count: int, seed: int) -> torch.Tensor:
    """``count`` uint8 NCHW 32x32 mixing pictures from ``seed``: half fractals, a quarter gratings,
    a quarter 1/f^alpha spectral patterns, in that order."""
    rng = np.random.default_rng(seed)
    half, quarter = count // 2, count // 4
    parts = [fractals(half, rng), gratings(quarter, rng), spectral(count - half - quarter, rng)]
    return torch.from_numpy(np.concatenate([_normalise(part) for part in parts]))
