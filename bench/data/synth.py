"""Small, deterministic, learnable synthetic datasets written in the REAL on-disk formats.

``synthesize(kind, out, seed=0, **size_options)`` writes one dataset so the very same readers,
``bench data verify`` and the whole train/evaluate path run on a fresh machine without downloads.
The content is made to be learnable by any of the benchmarked models in a few hundred steps:

- ``synapse``: CT-like volumes in [0, 1] (body ellipse, spine, 8 organ ellipsoids at fixed
  anatomical positions with per-case jitter; each organ has its own mean intensity *and* texture
  frequency/orientation; Gaussian noise). All 8 labels occur in every volume; the first and last
  slices hold no organ (the real training lists include such slices too).
- ``isic``: skin-coloured RGB images of varied, non-square size with one dark irregular lesion
  (a star-shaped blob with a soft edge in the image and a hard 0/255 mask).
- ``polyp``: pinkish mucosa with vessel texture and an endoscope vignette; one lighter, shaded
  polyp with a specular highlight. Two test sets, one of them stored as JPEG (as some are).
- ``nnunet``: 1-channel CT-like volumes (NIfTI with real spacing in the header) with an organ
  (label 1) and a darker lesion inside it (label 2); ``dims=2`` writes PNGs instead.
- ``isic_all``: the ``isic`` images in VM-UNet-V2's merged layout: ``train/`` and one folder per
  test set under ``val/`` (isic17, isic18).

Same ``seed`` and options -> identical arrays (every case draws from
``default_rng([seed, kind id, case index])``). Output is written into a temporary folder beside
``out`` and renamed into place at the end, so a crash never leaves a half dataset at ``out``.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from bench.errors import BenchError, unknown_name
from bench.fileio import atomic_write_dir, is_plain_name, portable_write_text
from bench.protocol import check_seed

GENERATOR_VERSION = 1  # bump when any generated array changes: cache folders carry it
# written into every synthetic dataset: how it was made. Runs on it are marked synthetic wherever it
# lies (--data-root included), and identified by it rather than by its path (bench.run.RunSpec.key)
MARKER = ".bench-synthetic.json"
# the marker's key for the files as written: each reader's ``content_id`` of them (``data_identity``);
# no part of how the data was made, so left out of ``synthetic_identity``
WRITTEN = "written"

DEFAULTS: dict[str, dict[str, Any]] = {
    "synapse": {"n_train": 6, "n_test": 3, "depth": 16, "size": 96, "spacing": (2.5, 0.8, 0.8)},
    "isic": {"n_train": 24, "n_val": 8, "min_size": 90, "max_size": 140},
    "polyp": {
        "n_train": 20,
        "n_test": 5,
        "test_sets": ("CVC-ClinicDB", "Kvasir"),
        "jpeg_sets": ("Kvasir",),
        "min_size": 90,
        "max_size": 140,
    },
    "nnunet": {"dims": 3, "n_cases": 10, "depth": 12, "size": 48, "spacing": (3.0, 0.8, 0.8)},
    # last: a kind's position is its id in every case's seed, so new kinds go at the end
    "isic_all": {"n_train": 24, "n_test": 8, "test_sets": ("isic17", "isic18"), "min_size": 90, "max_size": 140},
}
KINDS = tuple(DEFAULTS)
_KIND_ID = {k: i for i, k in enumerate(KINDS)}

# The real lists' first case names (Beckschen/TransUNet lists/lists_Synapse), so synthetic ids
# look like the real ones; further cases get case1000+.
SYNAPSE_TRAIN_CASES = ("case0005", "case0006", "case0007", "case0009", "case0010", "case0021", "case0023", "case0024")
SYNAPSE_TEST_CASES = ("case0008", "case0022", "case0038", "case0036", "case0032", "case0002")


def synthesize(kind: str, out: str | Path, *, seed: int = 0, **size_options: Any) -> Path:
    """Write a synthetic ``kind`` dataset (synapse | isic | polyp | nnunet | isic_all) to ``out``; return it.

    ``size_options`` override ``DEFAULTS[kind]`` (e.g. ``n_train=4, size=64``). ``out`` must not
    exist or be an empty folder. Example::

        root = synthesize("synapse", "/tmp/syn", n_train=2, n_test=1, depth=8, size=64)
        SynapseDataset(root).train_ids()[:2]   # ['case0005_slice000', 'case0005_slice001']
    """
    if kind not in DEFAULTS:
        raise unknown_name("synthetic kind", kind, KINDS)
    seed = check_seed(seed, f"synthetic {kind} data: seed")
    unknown = sorted(set(size_options) - set(DEFAULTS[kind]))
    if unknown:
        raise BenchError(f"synthetic {kind} data has no setting {', '.join(unknown)}; its settings (and defaults): "
                         + ", ".join(f"{k}={json.dumps(v)}" for k, v in DEFAULTS[kind].items()))
    for key, value in size_options.items():
        _check_setting(kind, key, value)
    options = {**DEFAULTS[kind], **size_options}
    if options.get("min_size", 0) > options.get("max_size", math.inf):
        raise BenchError(f"synthetic {kind} data: min_size {options['min_size']} is above max_size {options['max_size']}")
    writer: Callable[..., None] = _WRITERS[kind]
    made = {"generator": GENERATOR_VERSION, "kind": kind, "seed": seed, "options": options}

    def write(tmp: Path) -> None:
        from bench.data import DATASETS

        writer(tmp, seed=seed, **options)
        # the files as written, as each reader of the kind identifies them: data edited since is told apart
        written = {name: reader(tmp).content_id() for name, reader in DATASETS.items() if reader.kind == kind}
        portable_write_text(tmp / MARKER, json.dumps({**made, WRITTEN: written}, sort_keys=True) + "\n")

    return atomic_write_dir(Path(out).expanduser(), write)


def _marker(root: str | Path) -> tuple[str, dict[str, Any]] | None:
    """``MARKER`` in ``root`` as stored and as read ({} for one that is no JSON object); None for other data."""
    try:
        text = Path(root, MARKER).read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        made = json.loads(text)
    except ValueError:
        return text, {}
    return text, made if isinstance(made, dict) else {}


def synthetic_made(root: str | Path) -> dict[str, Any] | None:
    """What ``MARKER`` in ``root`` says (generator version, kind, seed, options and, since bench kept it,
    ``WRITTEN``); None for other data (no ``MARKER``), {} for a marker that is no JSON object."""
    marker = _marker(root)
    return None if marker is None else marker[1]


def synthetic_identity(root: str | Path) -> str | None:
    """What makes a folder written by ``synthesize`` the data it is (generator version, kind, seed,
    sizes), as a short text, wherever the folder lies; None for other data (no ``MARKER``). Whether its
    files are still those written is ``data_identity``'s question."""
    marker = _marker(root)
    return None if marker is None else _identity(*marker)


def _identity(text: str, made: dict[str, Any]) -> str:
    if WRITTEN in made:  # the recipe alone, as markers without WRITTEN hold it: their ids stay
        text = json.dumps({k: v for k, v in made.items() if k != WRITTEN}, sort_keys=True) + "\n"
    return "synthetic:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def data_identity(dataset: Any) -> str:
    """What identifies the data a reader opened (``bench.run.RunSpec.data_id``) wherever it lies: synthetic
    data by how it was made (``synthetic_identity``) while its files are those ``synthesize`` wrote, other
    data, synthetic data edited since included, by its files (``SegDataset.content_id``), the edited with a
    warning. A marker that keeps no ``WRITTEN`` id for this reader (bench before it) is taken at its word."""
    marker = _marker(dataset.root)  # read once: its id and what it says were written
    if marker is None:
        return dataset.content_id()
    made, written = _identity(*marker), marker[1].get(WRITTEN)
    if not isinstance(written, dict) or dataset.name not in written:
        return made
    files = dataset.content_id()
    if files == written[dataset.name]:
        return made
    warnings.warn(f"{dataset.root}: synthetic data edited since it was generated (its files differ from those its "
                  f"{MARKER} names): identified by its files ({files}) as data of one's own, not as {made}",
                  stacklevel=2)
    return files


def synth_command(made: dict[str, Any], out: str | Path) -> str:
    """The `bench data synth` command line that writes the data ``made`` (what ``synthetic_made`` read) to
    ``out``: its kind, seed and the options that differ from the defaults (by the generator of ``made``'s
    version: another version makes other data)."""
    kind = made.get("kind")
    defaults = json.loads(json.dumps(DEFAULTS.get(kind, {})))  # tuples as the marker holds them: lists
    changed = sorted((k, v) for k, v in (made.get("options") or {}).items() if defaults.get(k) != v)
    options = [f"--option {shlex.quote(k + '=' + json.dumps(v, separators=(',', ':')))}" for k, v in changed]
    return " ".join(["bench data synth --like", shlex.quote(str(kind)), "--out", shlex.quote(str(out)),
                     "--seed", str(made.get("seed")), *options])


def remake_text(rec: dict[str, Any], out: str | Path, results_dir: str | Path | None = None) -> str:
    """How to write again the synthetic data a run's record ``rec`` read, to ``out``: `bench run --synthetic`'s
    (in a results folder's ``synthetic/``: that grid with ``results_dir``), `bench data synth`'s (its recorded
    settings: the command, where this generator version is the one that made it); "" for other data. Data
    edited after it was generated (its id ``files:``) no generator makes again: that is said instead."""
    if not rec.get("synthetic"):
        return ""
    if not _as_generated(rec):
        return (f"its synthetic data was edited after it was generated (data id {rec['data_id']}), so no generator "
                "makes it again: only the folder it was read from holds it")
    if grid_data(rec) and results_dir is not None:
        return f"`bench run` of its grid with --synthetic --results {results_dir} makes it again (its finished runs are skipped)"
    made = rec.get("synthetic_made")
    if not made:  # a record written before it kept how
        return "the same `bench data synth` options (--like, --seed, --option) make it again"
    if made.get("generator") != GENERATOR_VERSION:
        return (f"`bench data synth` made it with generator version {made.get('generator')}, and this bench's "
                f"({GENERATOR_VERSION}) makes other data: only the folder it was read from holds it")
    return f"`{synth_command(made, out)}` makes it again"


def _as_generated(rec: dict[str, Any]) -> bool:
    """Whether record ``rec``'s synthetic data was as generated (not edited since: its id ``synthetic:``)."""
    return str(rec.get("data_id") or "synthetic:").startswith("synthetic:")


def grid_data(rec: dict[str, Any]) -> bool:
    """Whether record ``rec`` read `bench run --synthetic`'s data as generated (in a results folder's
    ``synthetic/``): data that grid's command makes again, the same generator making the same data."""
    return bool(rec.get("synthetic")) and Path(rec["data_root"]).parent.name == "synthetic" and _as_generated(rec)


def _check_setting(kind: str, key: str, value: Any) -> None:
    """BenchError unless ``value`` is of the kind of ``key``'s default: a whole number >= 1 (``dims``: 2
    or 3), a list of as many positive numbers (spacings), or a list of names."""
    default = DEFAULTS[kind][key]
    if isinstance(default, int):
        # an image side of 1 pixel holds no lesion to draw; one case, no training and test split
        least = 2 if key in ("min_size", "max_size", "n_cases") else 1
        ok = isinstance(value, int) and not isinstance(value, bool) and (value in (2, 3) if key == "dims" else value >= least)
        what = "2 or 3" if key == "dims" else f"a whole number >= {least}"
    elif all(isinstance(v, (int, float)) for v in default):
        ok = (isinstance(value, (list, tuple)) and len(value) == len(default)
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value))
        what = f"a list of {len(default)} positive numbers"
    else:  # folder names: one each, inside --out ("../x" or "/abs" would be written elsewhere), once each
        ok = (isinstance(value, (list, tuple)) and len(value) > 0
              and all(isinstance(v, str) and is_plain_name(v) for v in value) and len(set(value)) == len(value))
        what = "a list of distinct folder names"
    if not ok:
        raise BenchError(f"synthetic {kind} data: {key} takes {what}, e.g. {json.dumps(default)}; got {value!r}")


def _rng(seed: int, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _KIND_ID[kind], index])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std low-frequency noise (white noise blurred by ``sigma`` pixels)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-8)


# --- Synapse ---------------------------------------------------------------------------------

# (label, centre (z, y, x), radii (z, y, x)) in normalised coordinates [-1, 1] (y down = posterior,
# image left = patient right, the radiological convention), mean intensity, texture amplitude,
# texture frequency (cycles across the image), texture orientation (degrees).
_ORGANS = (
    (5, (0.15, -0.05, -0.45), (0.65, 0.35, 0.30), 0.53, 0.04, 3.0, 20.0),  # liver (painted first)
    (2, (0.20, -0.30, -0.20), (0.35, 0.09, 0.08), 0.20, 0.00, 0.0, 0.0),  # gallbladder
    (4, (-0.15, 0.38, -0.45), (0.45, 0.13, 0.09), 0.64, 0.06, 16.0, -45.0),  # kidney_r (image left)
    (3, (-0.15, 0.38, 0.45), (0.45, 0.13, 0.09), 0.72, 0.06, 16.0, 45.0),  # kidney_l (image right)
    (1, (0.00, 0.30, 0.00), (0.80, 0.08, 0.08), 0.85, 0.00, 0.0, 0.0),  # aorta
    (6, (0.00, 0.08, 0.10), (0.35, 0.06, 0.25), 0.45, 0.08, 14.0, 90.0),  # pancreas
    (7, (0.20, 0.15, 0.68), (0.40, 0.16, 0.10), 0.585, 0.06, 12.0, 0.0),  # spleen
    (8, (0.30, -0.25, 0.35), (0.45, 0.17, 0.22), 0.32, 0.07, 5.0, 60.0),  # stomach
)


def _grid(depth: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates in [-1, 1], each broadcastable to (depth, size, size)."""
    z = ((np.arange(depth) + 0.5) / depth * 2 - 1)[:, None, None]
    yx = (np.arange(size) + 0.5) / size * 2 - 1
    return z, yx[None, :, None], yx[None, None, :]


def _ellipsoid(z, y, x, centre, radii) -> np.ndarray:
    dist = ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2
    return dist <= 1.0


def synapse_volume(rng: np.random.Generator, depth: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One CT-like case: image float32 (D, H, W) in [0, 1], label uint8 (D, H, W) in 0..8."""
    z, y, x = _grid(depth, size)
    shape = (depth, size, size)
    # at least ~1.5 voxels of radius per axis so small test sizes keep every organ
    min_r = np.array([1.5 * 2 / depth, 1.5 * 2 / size, 1.5 * 2 / size])
    body = ((y - 0.05) / (0.62 * rng.uniform(0.95, 1.05))) ** 2 + (x / (0.85 * rng.uniform(0.95, 1.05))) ** 2 <= 1.0
    body = np.broadcast_to(body, shape)
    image = np.where(body, 0.38 + 0.03 * _smooth_noise(rng, shape, 3.0), 0.0)
    label = np.zeros(shape, np.uint8)
    spine = np.broadcast_to((y - 0.52) ** 2 + x**2 <= 0.09**2, shape)
    image = np.where(spine, 0.95, image)
    for lab, centre, radii, mean, amp, freq, angle in _ORGANS:
        c = np.asarray(centre) + rng.uniform(-1, 1, 3) * np.array([0.06, 0.04, 0.04])
        r = np.maximum(np.asarray(radii) * rng.uniform(0.9, 1.1, 3), min_r)
        mask = _ellipsoid(z, y, x, c, r) & body
        theta = np.deg2rad(angle)
        phase = rng.uniform(0, 2 * np.pi)
        texture = amp * np.sin(np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + phase)
        image = np.where(mask, mean + np.broadcast_to(texture, shape), image)
        label[mask] = lab
    image = image + rng.normal(0.0, 0.02, shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32), label


def _synapse_names(prefix: tuple[str, ...], n: int, start: int) -> list[str]:
    return [prefix[i] if i < len(prefix) else f"case{start + i:04d}" for i in range(n)]


def _write_synapse(root: Path, *, seed: int, n_train: int, n_test: int, depth: int, size: int, spacing) -> None:
    import h5py

    train_cases = _synapse_names(SYNAPSE_TRAIN_CASES, n_train, 1000)
    test_cases = _synapse_names(SYNAPSE_TEST_CASES, n_test, 2000)
    (root / "train_npz").mkdir()
    (root / "test_vol_h5").mkdir()
    lists = root / "lists" / "lists_Synapse"
    lists.mkdir(parents=True)
    train_lines = []
    for i, case in enumerate(train_cases):
        image, label = _checked_synapse_volume(_rng(seed, "synapse", i), depth, size, case)
        for s in range(depth):  # every slice, including those without organs, like the real list
            name = f"{case}_slice{s:03d}"
            np.savez(root / "train_npz" / f"{name}.npz", image=image[s], label=label[s])
            train_lines.append(name)
    for j, case in enumerate(test_cases):
        image, label = _checked_synapse_volume(_rng(seed, "synapse", 10_000 + j), depth, size, case)
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "w") as f:
            f.create_dataset("image", data=image)
            f.create_dataset("label", data=label)
            # Our extension: real files carry no spacing (the legacy policy ignores it anyway).
            f.attrs["spacing"] = np.asarray(spacing, dtype=np.float64)
    portable_write_text(lists / "train.txt", "\n".join(train_lines) + "\n")
    portable_write_text(lists / "test_vol.txt", "\n".join(test_cases) + "\n")
    portable_write_text(lists / "all.lst", "\n".join(f"{c}.npy.h5" for c in sorted(train_cases + test_cases)) + "\n")


def _checked_synapse_volume(rng, depth, size, case):
    image, label = synapse_volume(rng, depth, size)
    missing = sorted(set(range(1, 9)) - set(np.unique(label).tolist()))
    if missing:  # a generator bug or sizes too small to draw every organ
        raise BenchError(f"synthetic {case}: organs {missing} do not fit at depth={depth}, size={size}; give larger "
                         f"ones (--option depth=N --option size=N; the defaults: depth={DEFAULTS['synapse']['depth']}, "
                         f"size={DEFAULTS['synapse']['size']})")
    return image, label


# --- 2-D helpers -----------------------------------------------------------------------------


def _blob(rng: np.random.Generator, h: int, w: int, rel_radius: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Irregular star-shaped blob: (signed distance-like field <= 0 inside) and hard mask (H, W)."""
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    r0 = rng.uniform(*rel_radius) * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = yy - cy, (xx - cx) / rng.uniform(0.8, 1.25)
    angle = np.arctan2(dy, dx)
    radius = np.full_like(angle, r0)
    for k in range(2, 6):  # low-order harmonics make the border irregular but smooth
        radius += r0 * rng.uniform(0.0, 0.12) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    field = np.hypot(dy, dx) - radius  # < 0 inside, in pixels
    return field, field <= 0


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path)


def _save_rgb(array: np.ndarray, path: Path) -> None:
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(array).save(path, quality=95)
    else:
        Image.fromarray(array).save(path)


def _size(rng, lo, hi) -> tuple[int, int]:
    h, w = (int(v) for v in rng.integers(lo, hi + 1, 2))
    if h == w:  # keep every image non-square: catches H/W mix-ups
        w = w + 1 if w < hi else w - 1
    return h, w


# --- ISIC ------------------------------------------------------------------------------------


def isic_image(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Skin-like RGB uint8 (H, W, 3) with a dark lesion; mask uint8 (H, W) in {0, 255}."""
    skin = np.array([222.0, 172.0, 145.0]) + rng.uniform(-18, 18, 3)
    gx, gy = rng.uniform(-1, 1, 2)  # illumination gradient
    light = 1.0 + 0.08 * (np.linspace(-1, 1, w)[None, :] * gx + np.linspace(-1, 1, h)[:, None] * gy)
    image = skin[None, None, :] * light[..., None] + 6.0 * _smooth_noise(rng, (h, w), 4.0)[..., None]
    field, mask = _blob(rng, h, w, (0.16, 0.3))
    lesion = np.array([105.0, 68.0, 50.0]) + rng.uniform(-15, 15, 3)
    core = np.clip(-field / 8.0, 0, 1)[..., None]  # darker towards the centre
    lesion_img = lesion[None, None, :] * (1.0 - 0.3 * core) + 10.0 * _smooth_noise(rng, (h, w), 2.0)[..., None]
    alpha = np.clip(0.5 - field / 2.0, 0, 1)[..., None]  # ~2 px soft edge in the image only
    image = image * (1 - alpha) + lesion_img * alpha
    for _ in range(int(rng.integers(0, 3))):  # a few thin dark hairs as distractors
        y0, y1 = rng.uniform(0, h, 2)
        t = np.linspace(0, 1, 4 * max(h, w))
        ys, xs = (y0 + (y1 - y0) * t).astype(int), (t * (w - 1)).astype(int)
        image[np.clip(ys, 0, h - 1), xs] *= 0.55
    image = image + rng.normal(0, 3.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), (mask * 255).astype(np.uint8)


def _write_isic_folders(folders, *, seed: int, kind: str, min_size: int, max_size: int) -> None:
    """``isic_image`` pairs into each ``(folder, n)``: ``folder/images/ISIC_<index>.png`` and
    ``folder/masks/ISIC_<index>_segmentation.png``, the index running on across the folders."""
    index = 0
    for folder, n in folders:
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir(parents=True)
        for _ in range(n):
            rng = _rng(seed, kind, index)
            image, mask = isic_image(rng, *_size(rng, min_size, max_size))
            name = f"ISIC_{index:07d}"  # official naming: the mask carries a _segmentation suffix
            _save_png(image, folder / "images" / f"{name}.png")
            _save_png(mask, folder / "masks" / f"{name}_segmentation.png")
            index += 1


def _write_isic(root: Path, *, seed: int, n_train: int, n_val: int, min_size: int, max_size: int) -> None:
    _write_isic_folders([(root / "train", n_train), (root / "val", n_val)],
                        seed=seed, kind="isic", min_size=min_size, max_size=max_size)


def _write_isic_all(
    root: Path, *, seed: int, n_train: int, n_test: int, test_sets, min_size: int, max_size: int
) -> None:
    folders = [(root / "train", n_train)] + [(root / "val" / s, n_test) for s in test_sets]
    _write_isic_folders(folders, seed=seed, kind="isic_all", min_size=min_size, max_size=max_size)


# --- polyp -----------------------------------------------------------------------------------


def polyp_image(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Endoscopy-like RGB uint8 (H, W, 3) with one polyp; mask uint8 (H, W) in {0, 255}."""
    mucosa = np.array([196.0, 102.0, 92.0]) + rng.uniform(-12, 12, 3)
    vessels = np.abs(_smooth_noise(rng, (h, w), 3.0)) < 0.12  # thin winding lines
    image = mucosa[None, None, :] + 8.0 * _smooth_noise(rng, (h, w), 6.0)[..., None]
    image = np.where(vessels[..., None], image * np.array([0.8, 0.62, 0.62]), image)
    field, mask = _blob(rng, h, w, (0.14, 0.26))
    polyp = np.array([232.0, 150.0, 128.0]) + rng.uniform(-10, 10, 3)
    shade = np.clip(-field / 10.0, 0, 1)[..., None]  # dome: brighter towards the top
    polyp_img = polyp[None, None, :] * (0.85 + 0.15 * shade)
    alpha = np.clip(0.5 - field / 2.0, 0, 1)[..., None]
    rim = (np.abs(field) < 1.5)[..., None]  # a thin shadow line around the base
    image = image * (1 - alpha) + polyp_img * alpha
    image = np.where(rim, image * 0.8, image)
    ys, xs = np.nonzero(mask)
    if len(ys):  # specular highlight on the polyp
        k = int(rng.integers(len(ys)))
        yy, xx = np.mgrid[0:h, 0:w]
        spot = np.exp(-((yy - ys[k]) ** 2 + (xx - xs[k]) ** 2) / 6.0)[..., None]
        image = image + spot * (255 - image) * 0.9
    yy, xx = np.mgrid[0:h, 0:w]
    vignette = 1.0 - 0.45 * (((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2) / 2
    image = image * vignette[..., None] + rng.normal(0, 3.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), (mask * 255).astype(np.uint8)


def _write_polyp(
    root: Path, *, seed: int, n_train: int, n_test: int, test_sets, jpeg_sets, min_size: int, max_size: int
) -> None:
    index = 0
    folders = [(root / "TrainDataset", n_train, ".png")]
    folders += [(root / "TestDataset" / s, n_test, ".jpg" if s in jpeg_sets else ".png") for s in test_sets]
    for folder, n, ext in folders:
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir(parents=True)
        for i in range(n):
            rng = _rng(seed, "polyp", index)
            image, mask = polyp_image(rng, *_size(rng, min_size, max_size))
            _save_rgb(image, folder / "images" / f"{i + 1}{ext}")  # PraNet names: 1.png, 2.png, ...
            _save_png(mask, folder / "masks" / f"{i + 1}.png")  # masks stay lossless
            index += 1


# --- nnU-Net ---------------------------------------------------------------------------------


def nnunet_volume(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """2-D (H, W) or 3-D (D, H, W) image float32 in [0, 1] and label uint8 {0 bg, 1 organ, 2 lesion}."""
    coords = np.meshgrid(*[(np.arange(n) + 0.5) / n * 2 - 1 for n in shape], indexing="ij")
    body = sum((c / r) ** 2 for c, r in zip(coords, (0.9,) * len(shape))) <= 1.0
    image = np.where(body, 0.3 + 0.03 * _smooth_noise(rng, shape, 2.0), 0.0)
    centre = rng.uniform(-0.2, 0.2, len(shape))
    radii = rng.uniform(0.35, 0.5, len(shape))
    organ = sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii)) <= 1.0
    lesion_c = centre + rng.uniform(-0.3, 0.3, len(shape)) * radii
    lesion_r = np.maximum(radii * rng.uniform(0.3, 0.4), 3.0 / np.asarray(shape))
    lesion = (sum(((c - m) / r) ** 2 for c, m, r in zip(coords, lesion_c, lesion_r)) <= 1.0) & organ
    texture = 0.05 * np.sin(np.pi * 6 * coords[-1] + rng.uniform(0, 2 * np.pi))
    image = np.where(organ, 0.65 + texture, image)
    image = np.where(lesion, 0.42, image)
    image = np.clip(image + rng.normal(0, 0.02, shape), 0, 1).astype(np.float32)
    label = organ.astype(np.uint8)
    label[lesion] = 2
    return image, label


def _write_nnunet(root: Path, *, seed: int, dims: int, n_cases: int, depth: int, size: int, spacing) -> None:
    if dims not in (2, 3):
        raise BenchError(f"synthesize('nnunet'): dims must be 2 or 3, got {dims}")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    ending = ".nii.gz" if dims == 3 else ".png"
    for i in range(n_cases):
        rng = _rng(seed, "nnunet", i)
        case = f"synth_{i:03d}"
        if dims == 3:
            image, label = nnunet_volume(rng, (depth, size, size))
            _save_nifti(image, spacing, root / "imagesTr" / f"{case}_0000{ending}")
            _save_nifti(label, spacing, root / "labelsTr" / f"{case}{ending}")
        else:
            h, w = _size(rng, size, size + size // 2)
            image, label = nnunet_volume(rng, (h, w))
            _save_png((image * 255).round().astype(np.uint8), root / "imagesTr" / f"{case}_0000{ending}")
            _save_png(label, root / "labelsTr" / f"{case}{ending}")
    meta = {
        "name": "Dataset900_Synth",
        "description": f"ssm-unet-bench synthetic data, generator v{GENERATOR_VERSION}, seed {seed}",
        "channel_names": {"0": "CT" if dims == 3 else "X-ray"},
        "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": n_cases,
        "file_ending": ending,
    }
    portable_write_text(root / "dataset.json", json.dumps(meta, indent=2) + "\n")


def _save_nifti(array_zyx: np.ndarray, spacing_zyx, path: Path) -> None:
    """Write (D, H, W) = (z, y, x) as a NIfTI (x, y, z) with the spacing in the affine/zooms."""
    import nibabel as nib

    sz, sy, sx = (float(s) for s in spacing_zyx)
    img = nib.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)), np.diag([sx, sy, sz, 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


_WRITERS: dict[str, Callable[..., None]] = {
    "synapse": _write_synapse,
    "isic": _write_isic,
    "polyp": _write_polyp,
    "nnunet": _write_nnunet,
    "isic_all": _write_isic_all,
}
