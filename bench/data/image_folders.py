"""Image and mask folders of 2-D segmentation data: images listed and decoded (16-bit gray scaled,
masks drawn in colour read as 0/255), masks paired with their images by name (else by sorted name),
several masks of one image grouped. The ISIC and polyp readers, ``bench data verify`` and ``bench
data convert --source pairs`` read folders through it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from bench.data.base import hidden, reading, subfolders
from bench.errors import BenchError, few

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` sorted by file name (hidden files and other extensions skipped)."""
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and not hidden(p) and p.suffix.lower() in IMAGE_EXTS),
        key=lambda p: p.name,
    )


def _decode(path: Path, mode: str) -> np.ndarray:
    # Image.open only parses the header: convert() decodes, where a truncated file fails.
    with reading(path, "an image"):
        with Image.open(path) as im:
            if mode == "RGB" and im.mode.startswith(("I", "F")):
                return _wide_to_rgb(path, im)
            if mode == "L" and im.mode in ("RGB", "RGBA", "LA", "P", "PA"):
                return _coloured_mask(im)
            return np.asarray(im.convert(mode), dtype=np.uint8).copy()


def _coloured_mask(im: Image.Image) -> np.ndarray:
    """A mask saved in colour as 0/255 grayscale: a lesion drawn in the alpha channel over one colour,
    or one colour on black (a green mask's gray value is 150, which trained as 0.59, not 1); other
    colour masks as their gray value."""
    rgba = np.asarray(im.convert("RGBA"))
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    if alpha.min() != alpha.max() and rgb.min() == rgb.max():  # the shape is in the alpha channel alone
        return alpha.copy()
    colours = np.unique(rgb.reshape(-1, 3), axis=0)
    if len(colours) == 2 and not colours[0].any():  # black and one colour
        return np.where(rgb.any(axis=-1), 255, 0).astype(np.uint8)
    return np.asarray(im.convert("L"), dtype=np.uint8).copy()


def _wide_to_rgb(path: Path, im: Image.Image) -> np.ndarray:
    """A 16-bit grayscale image scaled to 8 bits (65535 -> 255): convert("RGB") clips it, so all but
    its darkest pixels read as white. Float or 32-bit integer values beyond 16 bits have no range to
    scale by (Pillow reads some 16-bit files as mode "I": their values fit)."""
    wide = np.asarray(im, dtype=np.float64)
    if im.mode == "F" or (wide.size and (wide.min() < 0 or wide.max() > 65535)):
        raise BenchError(f"{path}: a {'float' if im.mode == 'F' else '32-bit integer'} image (mode {im.mode}), "
                         "which has no fixed range to read as 8-bit RGB; save it as an 8-bit or 16-bit image")
    gray = np.rint(wide / 257.0).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def read_rgb(path: Path) -> np.ndarray:
    """uint8 (H, W, 3); a 16-bit grayscale image scaled to 8 bits. BenchError naming the file when it
    does not decode."""
    return _decode(path, "RGB")


def mask_pixels(path: Path) -> np.ndarray:
    """uint8 (H, W): a mask's gray values (a mask drawn in colour as 0/255), which ``read_mask`` divides."""
    return _decode(path, "L")


def read_mask(path: Path) -> np.ndarray:
    """float32 (H, W) in [0, 1]: the grayscale PNG divided by 255 (VM-UNet, PraNet).

    BenchError when no pixel reaches 128 (0.5 after /255) although some are set: such a mask
    stores class ids (0/1) instead of 0/255, and would train and score as all background."""
    raw = mask_pixels(path)
    top = int(raw.max(initial=0))
    if 0 < top < 128:
        raise BenchError(
            f"{path}: mask values reach only {top} in grayscale, so after /255 no pixel counts as foreground "
            "(>= 0.5); expected a 0/255 mask (a 0/1 class-id mask must be multiplied by 255; a coloured mask "
            "saved as white on black)"
        )
    return raw.astype(np.float32) / np.float32(255.0)


def mask_levels_note(mask: np.ndarray) -> str | None:
    """A mask (read_mask's [0, 1]) one grey level of which fills a region, beside 0 and 255: a label
    map of several classes, which a binary task splits at 128 unsaid; None for 0/255 masks and for
    soft or JPEG-noisy edges (mid values spread over many levels, on boundaries)."""
    raw = np.rint(mask * 255).astype(np.uint8)
    mid = raw[(raw >= 32) & (raw <= 223)]
    if mid.size < max(50, 0.02 * raw.size):
        return None
    level, count = np.unique(mid, return_counts=True)
    if count.max() < 0.5 * mid.size:
        return None
    value = int(level[count.argmax()])
    return (f"{int(count.max())} pixels of grey value {value} beside 0/255: several classes in one mask? The "
            f"binary task counts values >= 128 as foreground, so they become {'foreground' if value >= 128 else 'background'}; "
            "expected a binary 0/255 mask")


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    with reading(path, "an image"):
        with Image.open(path) as im:
            w, h = im.size
    return h, w


def _image_of(mask_stem: str, image_stems: set[str]) -> str | None:
    """The image stem a mask's name belongs to: the mask's own stem, or the longest image stem it
    starts with followed by ``_`` or ``-`` ("ISIC_0000000_segmentation" -> "ISIC_0000000"); None."""
    if mask_stem in image_stems:
        return mask_stem
    cuts = [i for i, ch in enumerate(mask_stem) if ch in "_-"]
    return next((mask_stem[:i] for i in reversed(cuts) if mask_stem[:i] in image_stems), None)


def pair_files(images_dir: Path, masks_dir: Path) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """Pair images with masks, in the images' sorted order (``mask_groups``, one mask per image). Returns
    ``(pairs, problems)``: where there are problems, the pairs that could be made all the same (an image with
    one mask of its name), so that ``bench data verify`` reads those too (``index_pairs`` refuses any problem)."""
    groups, problems = mask_groups(images_dir, masks_dir)
    problems = [(p, f"{len(found)} masks match its name: {', '.join(m.name for m in found)}; one mask per image: "
                    "merge them (their pixel-wise maximum; `bench data convert --source pairs` does, into the nnU-Net "
                    "layout), or move the others away")
                for p, found in groups if len(found) > 1] + problems  # BUSI's second lesion, among the others
    return [(p, found[0]) for p, found in groups if len(found) == 1], problems


def mask_groups(images_dir: Path, masks_dir: Path) -> tuple[list[tuple[Path, list[Path]]], list[tuple[Path, str]]]:
    """Group masks under their images, in the images' sorted order: several masks may share an image
    (BUSI's ``x_mask.png`` and ``x_mask_1.png``).

    By name where the names correspond (a mask named as its image, or as its image plus ``_...`` or
    ``-...``, as ISIC's ``_segmentation`` masks): then every image needs its mask and every mask its image. By
    sorted file name, as the authors' loaders pair, where no mask name matches any image (another
    naming scheme: ``img_001`` / ``mask_001``). Returns ``(groups, problems)``; ``problems`` lists
    ``(path, message)`` and is non-empty when a folder is missing, a name has no partner, or the counts
    differ; the groups are then those found by name (so every problem can be named at once), or none.
    """
    problems: list[tuple[Path, str]] = []
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            problems.append((folder, "folder missing"))
    if problems:
        return [], problems
    images, masks = list_images(images_dir), list_images(masks_dir)
    if not images and not masks:
        return [], [(images_dir, "no image files")]
    stems = {p.stem for p in images}
    seen: dict[str, Path] = {}
    for p in images:  # two images of one name (a .jpg and a .png) would share one mask
        if p.stem in seen:
            problems.append((p, f"a second image named {p.stem!r} beside {seen[p.stem].name}; expected one per name"))
        seen.setdefault(p.stem, p)
    if problems:
        return [], problems
    owner = {m: _image_of(m.stem, stems) for m in masks}
    if any(owner.values()):  # names correspond: pair by name, so sorting cannot shift a mask onto another image
        by_image: dict[str, list[Path]] = {}
        for m, stem in owner.items():
            if stem is None:
                problems.append((m, f"no image with a matching name in {images_dir}"))
            else:
                by_image.setdefault(stem, []).append(m)
        problems += [(p, f"no mask with a matching name in {masks_dir}") for p in images if p.stem not in by_image]
        return [(p, by_image[p.stem]) for p in images if p.stem in by_image], problems
    if len(images) != len(masks):
        folders = [] if masks else [p.name + "/" for p in subfolders(masks_dir)]
        per_class = (f"; it holds folders ({few(folders, 4)}), one per class? bench reads one mask per image: merge "
                     "them into masks of class ids (0, 1, 2, …)" if folders else "")
        return [], [(masks_dir, f"{len(images)} images in {images_dir} but {len(masks)} masks here, and no mask "
                                f"is named after its image to pair them by{per_class}")]
    pairs = list(zip(images, masks))
    # sorted order pairs "001.jpg" with "10_mask.png" ("10_" sorts before "1_"): where both names carry
    # numbers, they must share one, or the pairs are not what the names say
    off = [(i, m) for i, m in pairs if (a := _numbers(i.stem)) and (b := _numbers(m.stem)) and not a & b]
    if off:
        (i, m), more = off[0], len(off) - 1
        return [], [(m, f"paired by sorted file name with {i.name} (no mask is named after its image), but the "
                        f"numbers in the names differ" + (f" (and in {more} more pairs)" if more else "")
                        + "; expected masks named after their images (ISIC_0000000.jpg ↔ "
                          "ISIC_0000000_segmentation.png) or names that sort alike")]
    return [(i, [m]) for i, m in pairs], []


def _numbers(stem: str) -> set[int]:
    """The whole numbers in a file name ("img_007_v2" -> {7, 2}), one of which a pair by sorted name shares."""
    return {int(n) for n in re.findall(r"\d+", stem)}


def load_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Image uint8 (H, W, 3) and mask float32 (H, W); a size mismatch is a BenchError naming both."""
    image, mask = read_rgb(image_path), read_mask(mask_path)
    if image.shape[:2] != mask.shape:
        raise BenchError(f"{mask_path}: {size_mismatch(image_path, image.shape[:2], mask.shape)}")
    return image, mask


def size_mismatch(image: Path, hw: tuple[int, ...], mask_hw: tuple[int, ...]) -> str:
    """Why a mask of size ``mask_hw`` (H, W) does not fit its image, with the likely cause where the
    image carries an EXIF rotation (pixels are read as stored, as the authors' loaders read them;
    a mask drawn on the image as a viewer shows it is turned)."""
    try:  # a quarter turn (Orientation 5-8) swaps width and height: the mask fits the turned image
        with Image.open(image) as im:
            turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8) and tuple(mask_hw) == tuple(hw)[::-1]
    except Exception:  # noqa: BLE001 (its read names an unreadable file)
        turned = False
    return (f"mask size {mask_hw[1]}x{mask_hw[0]} differs from image {image} ({hw[1]}x{hw[0]}); expected "
            "equal sizes (W x H)" + ("; the image has an EXIF rotation, and pixels are read as stored: a mask drawn "
                                     "on the image as a viewer turns it fits the turned image" if turned else ""))


def index_pairs(images_dir: Path, masks_dir: Path, prefix: str = "") -> dict[str, tuple[Path, Path]]:
    """``{id: (image, mask)}`` with id = ``prefix + image stem``; BenchError on any pairing problem."""
    pairs, problems = pair_files(images_dir, masks_dir)
    if problems:
        raise BenchError(f"cannot pair images with masks: {few([f'{p}: {msg}' for p, msg in problems], 6, sep='; ')}")
    return {prefix + image.stem: (image, mask) for image, mask in pairs}  # stems are unique (pair_files)
