"""The built-in synthetic IHC sample: tissue-like patches rendered in stain optical density.

Each image is drawn as hematoxylin (H), eosin (E) and DAB optical-density maps (stroma texture,
cells with nuclei and membranes) and converted to RGB with the real stain vectors of Ruifrok &
Johnston (``skimage.color.rgb_from_hed``), so stain separation (``rgb2hed``) recovers them.

Classes differ the way real IHC stains do:

- ``Er``: nuclear DAB in most nuclei (75-95 %), strong and even.
- ``Pr``: nuclear DAB in about half the nuclei (35-65 %), weaker and heterogeneous intensity.
- ``Ki-67``: nuclear DAB in a low-to-moderate fraction, concentrated in proliferating clusters.
- ``Her2neu``: DAB on cell membranes (rings), nuclei stay blue.
- ``Histology``: H&E: blue nuclei, pink cytoplasm and stroma, no DAB.

Ki-67's positive fraction overlaps Pr's low end, so the texture (clusters) matters, not just the
amount of brown; Er and Pr are apart in fraction and intensity, though exposure and stain-strength
nuisances blur the amount of brown per image. Every image belongs to a patient (``P###`` in the file name; the same
ids across classes, like one patient with slides of several stains). Patients differ in stain
strength, colour cast, cell size and density, and in expression level per stain, so images of one
patient resemble each other and a group-aware split matters. Per image nuisances: stain strength,
brightness/contrast (some clearly too dark or washed out), blur, noise and a colour cast.

Output is deterministic: every random draw comes from a generator seeded by
``(seed, class, index)`` or ``(seed, patient)``, arithmetic is float64 (so CPU-specific SIMD
rounding cannot flip an 8-bit value in practice) and PNGs carry no timestamps.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from skimage.color import rgb_from_hed

from ihcflow.files import atomic_dir
from ihcflow.images.codec import encode_png

DEFAULT_CLASSES = ("Er", "Her2neu", "Pr", "Ki-67", "Histology")
PNG_COMPRESSION = 1  # fixed (same pixels, same bytes); higher levels save only ~3% here
_REF_SIZE = 256.0  # sizes below are px at 256; another size is the same view at another resolution
_STAIN_RGB = np.asarray(rgb_from_hed, dtype=np.float64)  # rows: H, E, DAB OD per unit stain


@dataclass(frozen=True)
class _Recipe:
    """How one class stains: where the DAB goes and how much of it, per patient slide."""

    pattern: str  # "nuclear" | "membrane" | "he"
    pos_frac: tuple[float, float]  # range of the patient's fraction of positive cells
    intensity: tuple[float, float]  # range of the patient's mean DAB OD on positive structures
    spread: float  # per-cell intensity variation (sd of log intensity)
    clusters: bool = False  # positive cells gathered in dense proliferating clusters


_RECIPES = {
    # Er and Pr overlapped (0.55-0.95 vs 0.30-0.85 positive): with the small demo set, Pr test
    # recall swung between 0.1 and 1.0 with the training seed
    "er": _Recipe("nuclear", (0.75, 0.95), (1.1, 1.6), 0.15),
    "pr": _Recipe("nuclear", (0.35, 0.65), (0.55, 0.95), 0.6),
    "ki67": _Recipe("nuclear", (0.06, 0.35), (0.8, 1.5), 0.25, clusters=True),
    "her2neu": _Recipe("membrane", (0.5, 1.0), (0.45, 1.3), 0.3),
    "histology": _Recipe("he", (0.0, 0.0), (0.0, 0.0), 0.0),
}
_ALIASES = {"her2": "her2neu", "he": "histology", "hande": "histology"}


def _recipe(name: str) -> _Recipe:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    key = _ALIASES.get(key, key)
    if key not in _RECIPES:
        raise ValueError(
            f"unknown synthetic class {name!r}; choose from {list(DEFAULT_CLASSES)} "
            "(case and punctuation are ignored)"
        )
    return _RECIPES[key]


def _class_id(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


@dataclass(frozen=True)
class _Patient:
    h_strength: float  # hematoxylin counterstain strength of this patient's lab run
    dab_strength: float
    eosin_strength: float
    tint: np.ndarray  # per-channel gain (scanner/lab colour cast)
    nucleus_radius: float  # px at 256 px
    density: float  # cells per patch
    stroma_dab: float  # nonspecific DAB background


def _patient(seed: int, patient: int) -> _Patient:
    rng = np.random.default_rng([seed, 1, patient])
    return _Patient(
        h_strength=rng.uniform(0.75, 1.25),
        dab_strength=rng.uniform(0.8, 1.2),
        eosin_strength=rng.uniform(0.75, 1.25),
        tint=rng.uniform(0.95, 1.05, size=3),
        nucleus_radius=rng.uniform(5.0, 7.5),
        density=rng.uniform(70.0, 130.0),
        stroma_dab=rng.uniform(0.0, 0.06),
    )


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-sd random field varying on a scale of ``size / cells`` px."""
    coarse = rng.normal(size=(cells, cells))
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-9)


def _draw_ellipse(
    img: np.ndarray,
    center: np.ndarray,
    axes: tuple[float, float],
    angle: float,
    value: float,
    thickness: int,
    arc: tuple[float, float] = (0.0, 360.0),
) -> None:
    shift = 4  # sub-pixel precision: coordinates in 1/16 px
    scale = 1 << shift
    cv2.ellipse(
        img,
        (int(round(center[0] * scale)), int(round(center[1] * scale))),
        (max(1, int(round(axes[0] * scale))), max(1, int(round(axes[1] * scale)))),
        angle,
        arc[0],
        arc[1],
        value,
        thickness,
        cv2.LINE_8,
        shift,
    )


def _place_cells(rng: np.random.Generator, tissue: np.ndarray, n: int, size: int) -> np.ndarray:
    """``n`` cell centres (x, y) inside the tissue mask (rejection sampling, vectorised)."""
    cand = rng.uniform(0, size, size=(4 * n + 16, 2))
    ix = np.clip(cand.astype(np.int64), 0, size - 1)
    inside = tissue[ix[:, 1], ix[:, 0]] > 0.5
    return cand[inside][:n]


@dataclass(frozen=True)
class Nucleus:
    """One nucleus as drawn: an ellipse in px (later nuclei are drawn over earlier ones)."""

    center: tuple[float, float]  # (x, y)
    axes: tuple[float, float]  # semi-axes
    angle: float  # degrees, as cv2.ellipse takes it
    positive: bool  # nuclear DAB (brown); membrane and H&E stains leave every nucleus blue


def _render(
    rng: np.random.Generator,
    recipe: _Recipe,
    pat: _Patient,
    pos_frac: float,
    intensity: float,
    size: int,
    nuclei: list[Nucleus] | None = None,
) -> np.ndarray:
    """One patch; when ``nuclei`` is a list, each nucleus drawn is appended to it (recording
    draws no random numbers, so the pixels are the same either way)."""
    scale = size / _REF_SIZE
    he = recipe.pattern == "he"

    # Tissue with a few empty (lumen/glass) areas and a fibrous stroma texture.
    tissue = np.clip((_smooth_field(rng, size, 5) + rng.uniform(1.0, 2.2)) * 1.5, 0.0, 1.0)
    texture = _smooth_field(rng, size, max(4, size // 10))
    fibres = np.zeros((size, size), np.float64)
    for _ in range(int(rng.integers(6, 16))):
        p0 = rng.uniform(0, size, 2)
        p1 = p0 + rng.normal(0, size / 3, 2)
        cv2.line(
            fibres,
            (int(p0[0]), int(p0[1])),
            (int(p1[0]), int(p1[1])),
            rng.uniform(0.5, 1.0),
            max(1, int(round(rng.uniform(1, 3) * scale))),
        )
    stroma = tissue * (1.0 + 0.35 * texture + 0.8 * cv2.GaussianBlur(fibres, (0, 0), 1.0 + scale))

    # Cells: positions, shapes, and which are positive.
    n = int(pat.density * rng.uniform(0.85, 1.15))
    centres = _place_cells(rng, tissue, n, size)
    cluster_member = np.zeros(len(centres), bool)
    if recipe.clusters:
        extra = []
        for _ in range(int(rng.integers(1, 4))):
            c = rng.uniform(0.15 * size, 0.85 * size, 2)
            k = int(rng.integers(10, 26))
            extra.append(c + rng.normal(0, 0.07 * size, size=(k, 2)))
        pts = np.clip(np.concatenate(extra), 0, size - 1)
        centres = np.concatenate([centres, pts])
        cluster_member = np.concatenate([cluster_member, np.ones(len(pts), bool)])
    m = len(centres)
    a = pat.nucleus_radius * scale * rng.lognormal(0.0, 0.15, m)
    b = a * rng.uniform(0.65, 1.0, m)
    angle = rng.uniform(0, 180, m)
    cell = rng.uniform(1.7, 2.2, m)
    if recipe.clusters:
        p_pos = np.where(cluster_member, 0.85, 0.5 * pos_frac)
    else:
        p_pos = np.full(m, pos_frac)
    positive = rng.random(m) < p_pos
    dab = intensity * rng.lognormal(0.0, recipe.spread, m) if recipe.spread else np.zeros(m)
    dab = np.clip(dab, 0.05, 3.0) * positive
    h_nuc = rng.uniform(0.8, 1.3, m) * (1.4 if he else 1.0)
    h_nuc = np.where(positive & (recipe.pattern == "nuclear"), 0.45 * h_nuc, h_nuc)
    ring_frac = rng.uniform(0.5, 1.0, m)  # completeness of the membrane ring

    nuc_h = np.zeros((size, size), np.float64)
    nuc_d = np.zeros((size, size), np.float64)
    memb = np.zeros((size, size), np.float64)
    cyto = np.zeros((size, size), np.float64)
    ring_px = max(1, int(round(2 * scale)))
    for i in range(m):
        axes_cell = (a[i] * cell[i], b[i] * cell[i] * rng.uniform(1.0, 1.3))
        _draw_ellipse(cyto, centres[i], axes_cell, angle[i], 1.0, -1)
        if recipe.pattern == "membrane" and positive[i]:
            start = rng.uniform(0, 360)
            arc = (start, start + 360 * ring_frac[i])
            _draw_ellipse(memb, centres[i], axes_cell, angle[i], dab[i], ring_px, arc)
        _draw_ellipse(nuc_h, centres[i], (a[i], b[i]), angle[i], h_nuc[i], -1)
        if nuclei is not None:
            nuclei.append(
                Nucleus(
                    (float(centres[i][0]), float(centres[i][1])),
                    (float(a[i]), float(b[i])),
                    float(angle[i]),
                    bool(positive[i]) and recipe.pattern == "nuclear",
                )
            )
        if recipe.pattern == "nuclear":
            _draw_ellipse(nuc_d, centres[i], (a[i], b[i]), angle[i], dab[i], -1)
    chromatin = 1.0 + 0.3 * cv2.GaussianBlur(rng.normal(size=(size, size)), (0, 0), 0.8 * scale)

    # Optical density per stain.
    od = np.empty((size, size, 3), np.float64)
    if he:
        od[..., 0] = 0.08 * stroma + nuc_h * chromatin
        od[..., 1] = pat.eosin_strength * (
            rng.uniform(0.25, 0.45) * stroma + rng.uniform(0.15, 0.35) * cyto * tissue
        )
        od[..., 2] = 0.0
    else:
        od[..., 0] = rng.uniform(0.05, 0.12) * stroma + 0.05 * cyto + nuc_h * chromatin
        od[..., 1] = 0.01 * stroma
        cyto_dab = 0.12 * intensity * cyto if recipe.pattern == "membrane" else 0.0
        od[..., 2] = pat.stroma_dab * stroma + nuc_d * chromatin + memb + cyto_dab
    stain = np.array([pat.h_strength, 1.0, pat.dab_strength]) * rng.uniform(0.85, 1.15, 3)
    od_soft = cv2.GaussianBlur(od * stain, (0, 0), 0.6 * scale) + 0.03  # + glass and mountant
    rgb = 255.0 * np.exp(-(od_soft @ _STAIN_RGB))
    rgb *= pat.tint * rng.uniform(0.97, 1.03, 3)
    return _nuisance(rng, rgb, scale)


def _nuisance(rng: np.random.Generator, rgb: np.ndarray, scale: float) -> np.ndarray:
    """Acquisition problems: exposure, contrast, focus and sensor noise."""
    mode = rng.random()
    if mode < 0.12:  # clearly too dark (under-exposed scan)
        rgb = rgb * rng.uniform(0.3, 0.5)
    elif mode < 0.24:  # washed out: bright and flat
        keep = rng.uniform(0.25, 0.45)
        rgb = rgb * keep + 255.0 * (1.0 - keep)
    else:
        mean = rgb.mean()
        rgb = (rgb - mean) * rng.uniform(0.85, 1.15) + mean + rng.uniform(-15, 15)
    if rng.random() < 0.4:  # slightly out of focus
        rgb = cv2.GaussianBlur(rgb, (0, 0), rng.uniform(0.5, 1.4) * scale)
    rgb = rgb + rng.normal(0.0, rng.uniform(1.0, 6.0), rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _render_indexed(
    class_name: str,
    index: int,
    patients: int,
    size: int,
    seed: int,
    nuclei: list[Nucleus] | None,
) -> np.ndarray:
    recipe = _recipe(class_name)
    patient = index % patients
    pat = _patient(seed, patient)
    slide = np.random.default_rng([seed, 2, _class_id(class_name), patient])
    pos_frac = slide.uniform(*recipe.pos_frac)
    intensity = slide.uniform(*recipe.intensity)
    rng = np.random.default_rng([seed, 3, _class_id(class_name), index])
    pos_frac = float(np.clip(pos_frac + rng.normal(0, 0.05), 0.0, 1.0))
    return _render(rng, recipe, pat, pos_frac, intensity, size, nuclei)


def render_image(
    class_name: str, index: int, *, patients: int = 20, size: int = 256, seed: int = 0
) -> np.ndarray:
    """One synthetic patch as (size, size, 3) uint8 RGB: image ``index`` of ``class_name``."""
    return _render_indexed(class_name, index, patients, size, seed, None)


def render_with_nuclei(
    class_name: str, index: int, *, patients: int = 20, size: int = 256, seed: int = 0
) -> tuple[np.ndarray, list[Nucleus]]:
    """:func:`render_image`'s patch (the same pixels) and the nuclei drawn in it, in order.

    Nucleus sizes scale with ``size`` (256 px shows the same field as any other size): at
    512 px they are about 15-30 px across. ``ihcflow.segmentation.sample`` turns them into
    instance masks.
    """
    nuclei: list[Nucleus] = []
    rgb = _render_indexed(class_name, index, patients, size, seed, nuclei)
    return rgb, nuclei


def file_name(index: int, patients: int) -> str:
    return f"P{index % patients:03d}_{index:04d}.png"


def _check_args(
    classes: Sequence[str], per_class: int, patients: int, size: int, seed: int
) -> None:
    if isinstance(classes, str) or not classes:
        raise ValueError(f"classes must be a non-empty list of names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names repeat: {list(classes)}")
    for name in classes:
        if not name or name.startswith(".") or any(c in name for c in "/\\\0") or name in {".."}:
            raise ValueError(f"class name {name!r} cannot be a folder name")
        _recipe(name)
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if not 1 <= patients <= 1000:
        raise ValueError(f"patients must be in 1..1000 (file names use P###), got {patients}")
    if per_class > 10000:
        raise ValueError(f"per_class must be <= 10000 (file names use 4 digits), got {per_class}")
    if size < 32:
        raise ValueError(f"size must be >= 32 px, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out}: folder is not empty; pass overwrite=True (CLI: --overwrite) to replace it"
        )


def generate(
    out_dir: str | Path,
    *,
    classes: Sequence[str] = DEFAULT_CLASSES,
    per_class: int = 100,
    patients: int = 20,
    size: int = 256,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Write the synthetic sample as ``out_dir/<class>/P{patient:03d}_{index:04d}.png``.

    Same arguments give byte-identical files. The folder is built beside ``out_dir`` and
    renamed into place; a non-empty ``out_dir`` is refused unless ``overwrite``, which replaces
    it whole. Returns the written paths, sorted.
    """
    _check_args(classes, per_class, patients, size, seed)
    classes = list(classes)
    out = Path(out_dir)
    check_out_dir(out, overwrite)
    rel: list[Path] = []
    with atomic_dir(out) as tmp:
        for name in classes:
            (tmp / name).mkdir()
            for index in range(per_class):
                rgb = render_image(name, index, patients=patients, size=size, seed=seed)
                path = Path(name) / file_name(index, patients)
                (tmp / path).write_bytes(encode_png(rgb, PNG_COMPRESSION))
                rel.append(path)
    return sorted(out / p for p in rel)
