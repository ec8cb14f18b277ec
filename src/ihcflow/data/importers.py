"""Bring your own data into ``data/``: a folder in either layout, or a MedMNIST-format ``.npz``.

Both importers build the new folder beside ``dest`` and rename it into place, so an interrupted
import never leaves a half-filled ``data/``. A non-empty ``dest`` is refused unless
``replace=True``; then the old folder is kept as ``<dest>.replaced-<YYYYmmdd-HHMMSS>``.
Nothing here downloads anything.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ihcflow.data.layout import GIVEN_SPLITS, DatasetError, discover
from ihcflow.files import atomic_dir
from ihcflow.images.codec import encode_png

GROUPS_FILE = "groups.csv"
PNG_COMPRESSION = 6
ALL = "all"  # the split key of counts in layout 1 (the program splits later)

# MedMNIST v2 label names (medmnist/info.py, INFO[...]["label"]) made into folder names.
# chestmnist is multi-label and the *3d sets are volumes: neither fits a class-folder layout.
_ORGAN = (
    "bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
    "liver", "lung-left", "lung-right", "pancreas", "spleen",
)  # fmt: skip
MEDMNIST_LABELS: dict[str, tuple[str, ...]] = {
    "pathmnist": (
        "adipose", "background", "debris", "lymphocytes", "mucus", "smooth_muscle",
        "normal_colon_mucosa", "cancer-associated_stroma",
        "colorectal_adenocarcinoma_epithelium",
    ),
    "dermamnist": (
        "actinic_keratoses_and_intraepithelial_carcinoma", "basal_cell_carcinoma",
        "benign_keratosis-like_lesions", "dermatofibroma", "melanoma", "melanocytic_nevi",
        "vascular_lesions",
    ),
    "octmnist": ("choroidal_neovascularization", "diabetic_macular_edema", "drusen", "normal"),
    "pneumoniamnist": ("normal", "pneumonia"),
    "retinamnist": ("grade_0", "grade_1", "grade_2", "grade_3", "grade_4"),  # labels "0".."4"
    "breastmnist": ("malignant", "normal_benign"),
    "bloodmnist": (
        "basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
        "neutrophil", "platelet",
    ),
    "tissuemnist": (
        "collecting_duct_connecting_tubule", "distal_convoluted_tubule",
        "glomerular_endothelial_cells", "interstitial_endothelial_cells", "leukocytes",
        "podocytes", "proximal_tubule_segments", "thick_ascending_limb",
    ),
    "organamnist": _ORGAN,
    "organcmnist": _ORGAN,
    "organsmnist": _ORGAN,
}  # fmt: skip


class DataImportError(DatasetError):
    """The source cannot be imported, or the destination is not free."""


@dataclass
class ImportSummary:
    dest: Path
    layout: int  # 1 or 2 (see ihcflow.data.layout)
    classes: tuple[str, ...]  # sorted
    counts: dict[str, dict[str, int]]  # split ("train"/"val"/"test", or "all") -> class -> n
    replaced_to: Path | None = None  # where the previous contents of dest were moved
    extra: list[str] = field(default_factory=list)  # metadata files copied (groups.csv)
    names: str = ""  # where the class names came from and label -> name (npz)

    @property
    def n_images(self) -> int:
        return sum(n for per_class in self.counts.values() for n in per_class.values())

    def describe(self) -> str:
        """A few lines for the CLI."""
        lines = [f"imported {self.n_images} files into {self.dest} (layout {self.layout})"]
        if self.names:
            lines.append(f"  {self.names}")
        for split, per_class in self.counts.items():
            body = ", ".join(f"{c}: {n}" for c, n in per_class.items())
            lines.append(f"  {split}: {body}")
        if self.extra:
            lines.append(f"  metadata: {', '.join(self.extra)}")
        if self.replaced_to is not None:
            lines.append(f"previous contents of {self.dest} kept in {self.replaced_to}")
        return "\n".join(lines)


def _check_dest(dest: Path, replace: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise DataImportError(f"{dest}: destination exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not replace:
        raise DataImportError(
            f"{dest}: destination is not empty; pass replace=True (CLI: --replace) to replace "
            "it (the old contents are kept beside it as <dest>.replaced-<timestamp>)"
        )


def _backup_name(dest: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = dest.with_name(f"{dest.name}.replaced-{stamp}")
    n = 1
    while candidate.exists():
        candidate = dest.with_name(f"{dest.name}.replaced-{stamp}-{n}")
        n += 1
    return candidate


@contextmanager
def swap_in(dest: Path, replace: bool) -> Iterator[tuple[Path, list[Path | None]]]:
    """Yield a temp folder to fill; on success it becomes ``dest`` and the old one is kept."""
    _check_dest(dest, replace)
    moved: list[Path | None] = [None]
    with atomic_dir(dest) as tmp:
        yield tmp, moved
        # Last step inside the block: move a non-empty dest aside; atomic_dir then renames tmp.
        if dest.is_dir() and any(dest.iterdir()):
            backup = _backup_name(dest)
            dest.replace(backup)
            moved[0] = backup


def is_inside(path: Path, other: Path) -> bool:
    path, other = path.resolve(), other.resolve()
    return path == other or other in path.parents


def import_folder(
    src: str | os.PathLike[str], dest: str | os.PathLike[str], *, replace: bool = False
) -> ImportSummary:
    """Copy a data folder in layout 1 or 2 into ``dest``.

    Only files the layout lists (below class folders, not hidden) and a top-level
    ``groups.csv`` are copied; other top-level files and hidden files stay behind.
    """
    src, dest = Path(src), Path(dest)
    layout = discover(src)  # DatasetError names the folder and the problem
    if is_inside(dest, src) or is_inside(src, dest):
        raise DataImportError(
            f"{src} -> {dest}: source and destination must not contain each other"
        )
    counts: dict[str, dict[str, int]] = {}
    for entry in layout.entries:
        per_class = counts.setdefault(entry.given_split or ALL, {})
        per_class[entry.label] = per_class.get(entry.label, 0) + 1
    extra = [GROUPS_FILE] if (src / GROUPS_FILE).is_file() else []
    with swap_in(dest, replace) as (tmp, moved):
        for entry in layout.entries:
            target = tmp / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / entry.path, target)
        for name in extra:
            shutil.copy2(src / name, tmp / name)
    return ImportSummary(
        dest=dest,
        layout=layout.kind,
        classes=tuple(sorted({e.label for e in layout.entries})),
        counts=_sorted_counts(counts),
        replaced_to=moved[0],
        extra=extra,
    )


def _sorted_counts(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    order = {s: i for i, s in enumerate((*GIVEN_SPLITS, ALL))}
    return {
        s: dict(sorted(counts[s].items())) for s in sorted(counts, key=lambda s: order.get(s, 99))
    }


_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|\s]+")  # path separators, controls, blanks


def folder_name(name: str) -> str:
    """A class name as a folder name on any OS: path separators, characters Windows refuses,
    control characters and blanks become ``_``; leading dots and ``_`` go (no hidden folders)."""
    return _UNSAFE.sub("_", name.strip()).lstrip("._").rstrip("_")


def _check_class_names(
    names: Sequence[object], source: str, origin: str, *, exact: bool = False
) -> tuple[str, ...]:
    """``names`` as folder names (:func:`folder_name`); an empty, reserved or repeated name
    after that is an error naming the originals. ``exact``: a name that is not already a
    safe folder name is an error (names the user typed are not rewritten)."""
    raw = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    folders = tuple(folder_name(n) for n in raw)
    for name, folder in zip(raw, folders, strict=True):
        if not folder or folder in GIVEN_SPLITS or (exact and folder != name):
            raise DataImportError(
                f"{source}: class name {name!r} ({origin}) cannot be a class folder name"
                + (f" (it becomes {folder!r})" if folder else " (nothing left once made safe)")
            )
    seen: dict[str, str] = {}
    for name, folder in zip(raw, folders, strict=True):
        if folder in seen:
            raise DataImportError(
                f"{source}: class names repeat ({origin}): {seen[folder]!r} and {name!r} "
                f"are both folder {folder!r}"
            )
        seen[folder] = name
    return folders


def _npz_class_names(z: np.lib.npyio.NpzFile, source: str) -> np.ndarray | None:
    """The file's own ``class_names`` (a 1-D array of strings), if it has one."""
    if "class_names" not in z.files:
        return None
    names = z["class_names"]
    if names.ndim != 1 or names.dtype.kind not in "USO" or len(names) == 0:
        raise DataImportError(
            f"{source}: class_names has shape {names.shape} and dtype {names.dtype}, "
            "expected a 1-D array of strings"
        )
    return names


def medmnist_labels(stem: str) -> tuple[str, ...] | None:
    """Label names for a MedMNIST file stem (``bloodmnist``, ``pathmnist_128``), else None."""
    key = re.sub(r"_(28|64|128|224)$", "", stem.lower())
    return MEDMNIST_LABELS.get(key)


def _load_split(z: np.lib.npyio.NpzFile, split: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    img_key, lab_key = f"{split}_images", f"{split}_labels"
    images, labels = z[img_key], z[lab_key]
    if images.dtype != np.uint8:
        raise DataImportError(f"{source}: {img_key} has dtype {images.dtype}, expected uint8")
    rgb = images.ndim == 4 and images.shape[3] == 3
    if not (images.ndim == 3 or rgb or (images.ndim == 4 and images.shape[3] == 1)):
        raise DataImportError(
            f"{source}: {img_key} has shape {images.shape}, expected (N, H, W) gray "
            "or (N, H, W, 3) RGB"
        )
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise DataImportError(f"{source}: {img_key} is empty (shape {images.shape})")
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise DataImportError(
            f"{source}: {lab_key} has shape {labels.shape}: multi-label not supported "
            "(one class per image is needed for class folders)"
        )
    if labels.ndim not in (1, 2):
        raise DataImportError(
            f"{source}: {lab_key} has shape {labels.shape}, expected (N,) or (N, 1)"
        )
    if labels.dtype.kind not in "iu":
        raise DataImportError(f"{source}: {lab_key} has dtype {labels.dtype}, expected integers")
    labels = labels.reshape(-1).astype(np.int64)
    if len(labels) != len(images):
        raise DataImportError(
            f"{source}: {img_key} has {len(images)} images but {lab_key} has {len(labels)} labels"
        )
    if labels.min() < 0:
        raise DataImportError(f"{source}: {lab_key} has a negative label {int(labels.min())}")
    return images, labels


def import_npz(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    replace: bool = False,
) -> ImportSummary:
    """Unpack a MedMNIST-format ``.npz`` into layout 2: ``dest/<split>/<class>/<split>_NNNNN.png``.

    The file holds ``{train,val,test}_images`` (uint8, (N, H, W) or (N, H, W, 3)) and
    ``{train,val,test}_labels`` ((N,) or (N, 1) integers); ``val`` is optional. Class names:
    ``classes``, else the file's own ``class_names`` array, else the MedMNIST names for the
    file's stem, else ``class_0..K-1``; each made a safe folder name (:func:`folder_name`).
    The summary says which names were used. The file index ``NNNNN`` is the row in the array,
    so each PNG traces back to its source.
    """
    src, dest = Path(src), Path(dest)
    source = str(src)
    _check_dest(dest, replace)  # fail before reading a large file
    if not src.is_file():
        raise DataImportError(f"{source}: file not found")
    try:
        z = np.load(src, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataImportError(f"{source}: not a readable .npz file ({exc})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataImportError(f"{source}: a single array (.npy), expected an .npz archive")
    with z:
        keys = set(z.files)
        splits = [s for s in GIVEN_SPLITS if f"{s}_images" in keys or f"{s}_labels" in keys]
        for split in sorted({"train", "test", *splits}, key=GIVEN_SPLITS.index):
            for kind in ("images", "labels"):
                if f"{split}_{kind}" not in keys:
                    raise DataImportError(
                        f"{source}: missing key '{split}_{kind}' (found {sorted(keys)})"
                    )
        try:
            data = {s: _load_split(z, s, source) for s in splits}
            own_names = _npz_class_names(z, source)
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            if isinstance(exc, DataImportError):
                raise
            raise DataImportError(f"{source}: cannot read array ({exc})") from None
    max_label = max(int(labels.max()) for _, labels in data.values())
    if classes is not None:
        origin = "given class names"
        names = _check_class_names(classes, source, origin, exact=True)
    elif own_names is not None:
        origin = "the file's class_names"
        names = _check_class_names(list(own_names), source, origin)
    elif (table := medmnist_labels(src.stem)) is not None:
        names, origin = table, f"MedMNIST labels of {src.stem}"
    else:
        names = tuple(f"class_{k}" for k in range(max_label + 1))
        origin = "class_<label>: the file has no class_names"
    if max_label >= len(names):
        split = next(s for s, (_, lab) in data.items() if int(lab.max()) == max_label)
        raise DataImportError(
            f"{source}: {split}_labels has label {max_label} but there are only "
            f"{len(names)} classes ({origin}: {list(names)})"
        )

    counts: dict[str, dict[str, int]] = {}
    with swap_in(dest, replace) as (tmp, moved):
        for split, (images, labels) in data.items():
            per_class: dict[str, int] = {}
            for k in np.unique(labels):
                (tmp / split / names[k]).mkdir(parents=True)
                per_class[names[k]] = int((labels == k).sum())
            for i, (img, k) in enumerate(zip(images, labels, strict=True)):
                path = tmp / split / names[k] / f"{split}_{i:05d}.png"
                path.write_bytes(_png(img))
            counts[split] = per_class
    present = sorted({c for per_class in counts.values() for c in per_class})
    return ImportSummary(
        dest=dest,
        layout=2,
        classes=tuple(present),
        counts=_sorted_counts(counts),
        replaced_to=moved[0],
        names=f"class names from {origin}: " + ", ".join(f"{k}={n}" for k, n in enumerate(names)),
    )


def _png(img: np.ndarray) -> bytes:
    """Gray stays 8-bit gray (no information added), RGB stays RGB."""
    if img.ndim == 3 and img.shape[2] == 3:
        return encode_png(np.ascontiguousarray(img), PNG_COMPRESSION)
    gray = np.ascontiguousarray(img.reshape(img.shape[0], img.shape[1]))
    ok, buf = cv2.imencode(".png", gray, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
