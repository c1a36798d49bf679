"""Offline image-caption pairs from real data: Noto colour emoji and Tux Paint stamps.

- Emoji: names and Unicode groups from ``emoji-test.txt`` (Debian ``unicode-data``), images
  rendered with Pillow from Noto Color Emoji (Debian ``fonts-noto-color-emoji``). All skin-tone
  variants of an emoji share one *concept*, so a held-out split never shows a variant of a
  held-out emoji in training.
- Tux Paint stamps (Debian ``tuxpaint-stamps-default``): photos and drawings, each captioned by
  the first line of the ``.txt`` beside it. Each stamp is its own concept.
"""

from __future__ import annotations

import functools
import io
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from streams.datasets import DataNotFoundError

EMOJI_TEST_FILE = Path("/usr/share/unicode/emoji/emoji-test.txt")
EMOJI_FONT_FILE = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
TUX_STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")

EMOJI_INSTALL = "apt-get install fonts-noto-color-emoji unicode-data"
TUX_INSTALL = "apt-get install tuxpaint-stamps-default"

# Noto Color Emoji is a bitmap font with one strike of 109 px; at that size a glyph is 136 x 128.
EMOJI_FONT_SIZE = 109
EMOJI_CANVAS = (136, 128)
SVG_LONGEST_SIDE = 256  # SVG stamps have no natural pixel size; PNG stamps are mostly 60-400 px
WHITE = (255, 255, 255, 255)

SOURCES = ("emoji", "tux")


@dataclass(frozen=True)
class Pair:
    """One image-caption pair.

    ``concept`` is the unit of held-out splits; ``group`` is a coarse category (emoji: the
    Unicode group, e.g. "Animals & Nature"; tux: the top-level stamps folder, e.g. "animals").
    ``ref`` says where the image comes from: the emoji's characters, or the image file's path
    (stamps, manifests). ``key`` identifies the image: pairs with the same key share it (several
    captions per image). ``split`` is "train"/"test" where the data fixes it, else "".
    """

    source: str
    key: str
    caption: str
    concept: str
    group: str
    ref: str
    split: str = ""

    def image(self) -> Image.Image:
        """The pair's image as PIL RGB (rendered or read now, not cached)."""
        if self.source == "emoji":
            return render_emoji(self.ref)
        if self.source == "tux":
            return load_stamp(self.ref)
        from streams.files import load_image  # image files named by a manifest

        return load_image(self.ref)


def _on_white(image: Image.Image) -> Image.Image:
    """Composite an image with transparency onto white and return RGB."""
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")


# ---------------------------------------------------------------------------------------------
# Emoji


def emoji_concept(name: str) -> str:
    """The emoji's name without skin-tone qualifiers ("waving hand: dark skin tone" -> "waving hand").

    Other qualifiers stay: "man: medium skin tone, red hair" -> "man: red hair".
    """
    base, sep, qualifiers = name.partition(": ")
    if not sep:
        return name
    kept = [q for q in qualifiers.split(", ") if not q.endswith("skin tone")]
    return f"{base}: {', '.join(kept)}" if kept else base


@functools.lru_cache(maxsize=4)
def _emoji_font(path: str) -> ImageFont.FreeTypeFont:
    """Loading the font takes longer than rendering a glyph, so load it once per path."""
    return ImageFont.truetype(path, EMOJI_FONT_SIZE)


def _render_emoji_rgba(chars: str, font_path: str) -> Image.Image:
    canvas = Image.new("RGBA", EMOJI_CANVAS, (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((0, 0), chars, font=_emoji_font(font_path), embedded_color=True)
    return canvas


def render_emoji(chars: str, font_path: str | Path = EMOJI_FONT_FILE) -> Image.Image:
    """Render an emoji as a 136 x 128 RGB image on white."""
    if not Path(font_path).is_file():
        raise DataNotFoundError(f"Emoji font not found: {font_path}: {EMOJI_INSTALL}")
    return _on_white(_render_emoji_rgba(chars, str(font_path)))


def _renders_as_one_glyph(chars: str, font_path: str) -> bool:
    """True if the font draws ``chars`` as a single visible glyph inside the canvas.

    Sequences the font (or Pillow's text layout) cannot join come out as several glyphs, wider
    than one canvas; those are skipped, as are ones that draw nothing or fail.
    """
    try:
        left, _, right, _ = _emoji_font(font_path).getbbox(chars)
        if right - left > EMOJI_CANVAS[0]:
            return False
        return _render_emoji_rgba(chars, font_path).getchannel("A").getbbox() is not None
    except (OSError, ValueError):
        return False


@functools.lru_cache(maxsize=4)
def _emoji_pairs(test_file: str, font_path: str) -> tuple[Pair, ...]:
    pairs = []
    group = ""
    for line in Path(test_file).read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.partition(":")[2].strip()
            continue
        if not line.strip() or line.startswith("#"):
            continue
        codes, _, rest = line.partition(";")
        status, _, comment = rest.partition("#")
        if status.strip() != "fully-qualified" or group == "Component":
            continue
        # comment: "<emoji> E<version> <name>"
        name = comment.split(maxsplit=2)[2].strip()
        code_points = codes.split()
        chars = "".join(chr(int(c, 16)) for c in code_points)
        if not _renders_as_one_glyph(chars, font_path):
            continue
        pairs.append(Pair(
            source="emoji",
            key="emoji/" + "-".join(code_points),
            caption=f"an emoji of a {name.lower()}",
            concept=emoji_concept(name),
            group=group,
            ref=chars,
        ))
    return tuple(pairs)


def emoji_pairs(test_file: str | Path = EMOJI_TEST_FILE, font_path: str | Path = EMOJI_FONT_FILE) -> list[Pair]:
    """All fully-qualified emoji (the Component group aside) that the font renders as one glyph.

    Captions read "an emoji of a turtle"; the result is cached (checking renders takes ~2 s).
    """
    for path in (test_file, font_path):
        if not Path(path).is_file():
            raise DataNotFoundError(f"Emoji data not found: {path}: {EMOJI_INSTALL}")
    return list(_emoji_pairs(str(test_file), str(font_path)))


# ---------------------------------------------------------------------------------------------
# Tux Paint stamps


def render_svg(path: str | Path, longest_side: int = SVG_LONGEST_SIDE) -> Image.Image:
    """An SVG stamp rasterised with CairoSVG, its longest side scaled to ``longest_side``.

    ``unsafe=True`` lets CairoSVG read the XML entity declarations some stamps use; these are
    the system's own files, not untrusted input.
    """
    import cairosvg

    with Image.open(io.BytesIO(cairosvg.svg2png(url=str(path), unsafe=True))) as image:
        scale = longest_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return _on_white(image.resize(size, Image.LANCZOS))


def load_stamp(path: str | Path) -> Image.Image:
    """A Tux Paint stamp (PNG or SVG) as RGB on white."""
    if Path(path).suffix.lower() == ".svg":
        return render_svg(path)
    with Image.open(path) as image:
        return _on_white(image)


def _first_line(path: Path) -> str:
    """The first non-empty line of a text file, whitespace collapsed; tolerant of odd encodings."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # never fails; the English first line is ASCII anyway
    for line in text.splitlines():
        if line.strip():
            return " ".join(line.split())
    return ""


def tux_pairs(root: str | Path = TUX_STAMPS_DIR) -> list[Pair]:
    """Every stamp image with a caption ``.txt`` beside it, in sorted path order.

    The PNG is used where there is one, else the SVG. Stamps with the same caption share a
    concept, so that a held-out split never shows a held-out sentence in training.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"Tux Paint stamps not found: {root}: {TUX_INSTALL}")
    pairs = []
    for txt in sorted(root.rglob("*.txt")):
        image_path = txt.with_suffix(".png")
        if not image_path.is_file():
            image_path = txt.with_suffix(".svg")
            if not image_path.is_file():
                continue
        caption = _first_line(txt)
        if not caption:
            continue
        relative = txt.relative_to(root).with_suffix("")
        key = "tux/" + relative.as_posix()
        pairs.append(Pair(
            source="tux",
            key=key,
            caption=caption,
            concept="tux/" + caption.lower(),
            group=relative.parts[0] if len(relative.parts) > 1 else "",
            ref=str(image_path),
        ))
    return pairs


# ---------------------------------------------------------------------------------------------
# Splits and datasets


def load_pairs(sources: Sequence[str]) -> list[Pair]:
    """The pairs of the given sources ("emoji", "tux"), concatenated in that order."""
    loaders: dict[str, Callable[[], list[Pair]]] = {"emoji": emoji_pairs, "tux": tux_pairs}
    pairs: list[Pair] = []
    for source in sources:
        if source not in loaders:
            raise ValueError(f"unknown caption source {source!r}; choose from {', '.join(SOURCES)}")
        pairs.extend(loaders[source]())
    return pairs


def split_by_concept(
    pairs: Sequence[Pair], heldout_fraction: float = 0.15, seed: int = 0
) -> tuple[list[Pair], list[Pair]]:
    """Split into (train, held-out) so that no concept is on both sides.

    ``heldout_fraction`` of each source's concepts is held out, drawn per source with its own
    seeded generator: adding a source does not change another source's split. Both lists keep
    the input order.
    """
    heldout: set[tuple[str, str]] = set()
    for source in sorted({p.source for p in pairs}):
        concepts = sorted({p.concept for p in pairs if p.source == source})  # sorted: stable under input order
        random.Random(f"{seed}:{source}").shuffle(concepts)
        heldout.update((source, c) for c in concepts[: round(len(concepts) * heldout_fraction)])
    train = [p for p in pairs if (p.source, p.concept) not in heldout]
    test = [p for p in pairs if (p.source, p.concept) in heldout]
    return train, test


def concept_key(pair: Pair) -> str:
    """Identifies a pair's concept across sources ("emoji:turtle"): the unit that must not be on
    both sides of a train / control split."""
    return f"{pair.source}:{pair.concept}"


class PairDataset(torch.utils.data.Dataset):
    """Image-caption pairs; items are ``(image after transform, caption, index)``."""

    def __init__(self, pairs: Sequence[Pair], transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.pairs = list(pairs)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Any, str, int]:
        pair = self.pairs[index]
        image = pair.image()
        if self.transform is not None:
            image = self.transform(image)
        return image, pair.caption, index
