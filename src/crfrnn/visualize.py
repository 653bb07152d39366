"""Pictures of segmentations: label overlays, before/after comparisons and grids of predictions (PIL and NumPy
only, no matplotlib).

:func:`label_overlay` is the one painter of label colours over an image; :func:`make_overlay` (``crfrnn refine
--overlay``), :func:`save_prediction_grid` and ``crfrnn segment --overlay`` draw with it.

Label maps are coloured with the PASCAL VOC palette (:func:`crfrnn.data.color_palette`); void pixels
(255) are drawn in :data:`VOID_COLOR`, VOC's own neutral cream colour, which no class index below 255 uses.

Images may be given as ``(3, H, W)`` tensors on the 0..255 scale (as the data sets return them), ``(H, W, 3)``
uint8 arrays, ``(H, W)`` grey arrays or PIL images; label maps as ``(H, W)`` integer tensors or arrays.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from crfrnn._utils.files import PathLike, atomic_save_image
from crfrnn.data.palette import color_palette, colorize

__all__ = [
    "VOID_COLOR",
    "colorize_labels",
    "label_overlay",
    "make_overlay",
    "picture_grid",
    "save_prediction_grid",
]

Color = tuple[int, int, int]

#: colour of void (255) pixels: VOC's own void colour (224, 224, 192)
VOID_COLOR: Color = tuple(int(c) for c in color_palette(256)[255])  # type: ignore[assignment]
_MIN_TILE_WIDTH = 100  # save_prediction_grid up-scales smaller tiles so that column titles fit


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, Image.Image):
        return np.asarray(x.convert("RGB"))
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_rgb(image: Any, name: str = "image") -> np.ndarray:
    """``(H, W, 3)`` uint8 from a (3, H, W) 0..255 tensor/array, an (H, W, 3) or (H, W) array or a PIL image."""
    is_tensor = hasattr(image, "detach")
    arr = _to_numpy(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and (is_tensor or arr.shape[-1] != 3):
        arr = arr.transpose(1, 2, 0)  # channels first, as the data sets return images
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(
            f"{name} must be an RGB image of shape (3, H, W) or (H, W, 3), or a grey (H, W) image, got shape "
            f"{tuple(arr.shape)}. Pass one image at a time (index the batch)."
        )
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must hold numbers on the 0..255 scale, got dtype {arr.dtype}.")
    return np.ascontiguousarray(np.clip(np.round(arr.astype(np.float64)), 0, 255).astype(np.uint8))


def colorize_labels(labels: Any, *, void_color: Color = VOID_COLOR) -> np.ndarray:
    """Colour a label map with the VOC palette, void (255) pixels in ``void_color``.

    Args:
        labels: ``(H, W)`` integer labels in ``[0, 255]`` (tensor or array).
        void_color: RGB colour of the void pixels.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.

    Example:
        >>> colorize_labels(np.array([[0, 1, 255]]), void_color=(9, 9, 9)).tolist()
        [[[0, 0, 0], [128, 0, 0], [9, 9, 9]]]
    """
    rgb = colorize(labels)  # checks shape, dtype and range
    void = _to_numpy(labels) == 255
    if void.any():
        rgb[void] = np.asarray(void_color, dtype=np.uint8)
    return rgb


def label_overlay(image: Any, labels: Any, alpha: float = 0.5, *, void_color: Optional[Color] = None) -> np.ndarray:
    """Blend the colours of a label map over an image: ``(1 - alpha) * image + alpha * colours``.

    Args:
        image: ``(3, H, W)`` tensor on 0..255, ``(H, W, 3)`` uint8 array or PIL image.
        labels: ``(H, W)`` integer labels of the same size (255 = void).
        alpha: opacity of the label colours, in ``[0, 1]``.
        void_color: colour blended over void pixels; ``None`` leaves them as the image.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.

    Example:
        >>> label_overlay(np.full((1, 2, 3), 200, np.uint8), np.array([[0, 255]]), 0.5).tolist()
        [[[100, 100, 100], [200, 200, 200]]]
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}.")
    rgb = _as_rgb(image)
    colours = colorize_labels(labels, void_color=void_color or VOID_COLOR)
    if colours.shape[:2] != rgb.shape[:2]:
        raise ValueError(f"labels of size {colours.shape[:2]} do not match the image of size {rgb.shape[:2]} (H, W).")
    out = (1.0 - alpha) * rgb.astype(np.float64) + alpha * colours.astype(np.float64)
    if void_color is None:
        void = _to_numpy(labels) == 255
        out[void] = rgb[void]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _boundaries(labels: np.ndarray) -> np.ndarray:
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    return edge


def _font(size: int) -> Union[ImageFont.ImageFont, ImageFont.FreeTypeFont]:
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError):  # pragma: no cover - old Pillow or no FreeType
        return ImageFont.load_default()


def make_overlay(
    image: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    *,
    alpha: float = 0.55,
    titles: Optional[Sequence[str]] = ("image", "input (argmax)", "refined (dense CRF)"),
    gap: int = 4,
    legend: bool = False,
) -> np.ndarray:
    """Side-by-side picture: image | labels before | labels after, labels coloured with the VOC palette.

    Label colours are blended over the image by :func:`label_overlay` with weight ``alpha`` (1 shows the
    palette alone; unknown labels, outside 0..254, in :data:`VOID_COLOR`) and label boundaries are drawn in
    white, so that edges that snap to the image are easy to see.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        before: ``(H, W)`` integer labels in 0..255 (255 = unknown/void).
        after: ``(H, W)`` integer labels in 0..255.
        alpha: weight of the label colours, in ``[0, 1]``.
        titles: three panel titles drawn above the panels, or None for none.
        gap: white pixels between panels.
        legend: add a strip below: a swatch and the number of each label in ``before`` or ``after`` (or void).

    Returns:
        ``(H', 3 W + 2 gap, 3)`` uint8 RGB, ``H' = H`` without titles and legend.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    if titles is not None and len(titles) != 3:
        raise ValueError(f"titles must be three strings (image, before, after) or None, got {len(titles)}.")
    image = np.asarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    panels = [image]
    for labels in (before, after):
        labels = np.asarray(labels)
        if labels.shape != (h, w):
            raise ValueError(f"labels of shape {labels.shape} do not match the image of shape {image.shape[:2]}.")
        shown = np.where((labels >= 0) & (labels <= 255), labels, 255)
        panel = label_overlay(image, shown, alpha, void_color=VOID_COLOR)
        panel[_boundaries(labels)] = 255
        panels.append(panel)
    sep = np.full((h, gap, 3), 255, np.uint8)
    row = np.concatenate([panels[0], sep, panels[1], sep, panels[2]], axis=1)
    if legend:
        present = np.union1d(np.unique(np.asarray(before)), np.unique(np.asarray(after)))
        row = np.concatenate([row, _legend_strip(present, row.shape[1], max(10, min(16, w // 14)))], axis=0)
        h = row.shape[0]
    if titles is None:
        return row
    font_size = max(10, min(16, w // 14))
    strip_h = font_size + 8
    canvas = Image.new("RGB", (row.shape[1], h + strip_h), (255, 255, 255))
    canvas.paste(Image.fromarray(row), (0, strip_h))
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size)
    for i, title in enumerate(titles):
        x0 = i * (w + gap)
        tw = draw.textlength(title, font=font)
        draw.text((x0 + max(0.0, (w - tw) / 2), 3), title, fill=(0, 0, 0), font=font)
    return np.array(canvas)


def _legend_strip(labels: np.ndarray, width: int, font_size: int) -> np.ndarray:
    """``(S, width, 3)`` uint8: a swatch of each label's colour and its number (``void`` outside 0..254), in rows."""
    palette = color_palette(256)
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    void = bool(((labels < 0) | (labels > 254)).any())
    items = [(int(k), str(int(k))) for k in labels if 0 <= k <= 254] + [(255, "void")] * void
    line_h, pad = font_size + 6, 4
    places, x, y = [], pad, pad
    for k, text in items:
        item_w = font_size + 4 + int(measure.textlength(text, font=font)) + 2 * pad
        if x > pad and x + item_w > width:
            x, y = pad, y + line_h
        places.append((k, text, x, y))
        x += item_w
    canvas = Image.new("RGB", (width, y + line_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, text, x, y in places:
        colour = VOID_COLOR if k == 255 else tuple(int(c) for c in palette[k])
        draw.rectangle((x, y + 2, x + font_size, y + 2 + font_size), fill=colour, outline=(0, 0, 0))
        draw.text((x + font_size + 4, y + 2), text, fill=(0, 0, 0), font=font)
    return np.array(canvas)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text``, shortened with '...' until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def picture_grid(
    rows: Sequence[Sequence[Any]],
    *,
    titles: Optional[Sequence[str]] = None,
    scale: int = 1,
    padding: int = 4,
    background: Color = (255, 255, 255),
) -> Image.Image:
    """Lay pictures out in a grid with optional column titles.

    Every cell has the size of the largest tile times ``scale``; a tile is up-scaled by ``scale`` (nearest
    neighbour, so label colours stay crisp) and placed at its cell's top-left corner. The grid is
    ``padding + C * (cell_w + padding)`` pixels wide and ``title_h + padding + R * (cell_h + padding)`` high,
    where ``title_h`` is 0 without titles and the height of a line of PIL's default font plus ``padding``
    with them. Titles longer than a cell are shortened with "...".

    Args:
        rows: ``R`` rows of ``C`` tiles each: ``(H, W, 3)`` uint8 arrays, ``(3, H, W)`` tensors on 0..255,
            ``(H, W)`` grey arrays or PIL images.
        titles: ``C`` column titles, or ``None``.
        scale: integer up-scaling factor of the tiles, ``>= 1``.
        padding: pixels between and around the tiles.
        background: RGB colour of the padding and of the unused part of smaller tiles' cells.

    Returns:
        An RGB :class:`PIL.Image.Image`.

    Example:
        >>> grid = picture_grid([[np.zeros((8, 10, 3), np.uint8)] * 3] * 2, padding=2)
        >>> grid.size  # (2 + 3 * (10 + 2), 2 + 2 * (8 + 2))
        (38, 22)
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an int >= 1, got {scale!r}.")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}.")
    rows = [list(r) for r in rows]
    if not rows or not rows[0]:
        raise ValueError("rows must hold at least one row with at least one tile.")
    num_cols = len(rows[0])
    bad = [i for i, r in enumerate(rows) if len(r) != num_cols]
    if bad:
        raise ValueError(
            f"every row must have the same number of tiles; row 0 has {num_cols} but rows {bad} have "
            f"{[len(rows[i]) for i in bad]}."
        )
    if titles is not None and len(titles) != num_cols:
        raise ValueError(f"got {len(titles)} titles for {num_cols} columns; give one title per column.")
    tiles = [[_as_rgb(t, f"tile ({i}, {j})") for j, t in enumerate(r)] for i, r in enumerate(rows)]
    cell_h = scale * max(t.shape[0] for r in tiles for t in r)
    cell_w = scale * max(t.shape[1] for r in tiles for t in r)

    font = ImageFont.load_default()
    title_h = 0
    if titles is not None:
        left, top, right, bottom = font.getbbox("Ag")
        title_h = int(math.ceil(bottom)) + padding
    width = padding + num_cols * (cell_w + padding)
    height = title_h + padding + len(rows) * (cell_h + padding)
    canvas = Image.new("RGB", (width, height), tuple(background))
    draw = ImageDraw.Draw(canvas)
    if titles is not None:
        for j, text in enumerate(titles):
            draw.text(
                (padding + j * (cell_w + padding), padding),
                _fit_text(draw, str(text), font, cell_w),
                fill=(0, 0, 0),
                font=font,
            )
    for i, r in enumerate(tiles):
        for j, t in enumerate(r):
            tile = Image.fromarray(t)
            if scale != 1:
                tile = tile.resize((t.shape[1] * scale, t.shape[0] * scale), Image.Resampling.NEAREST)
            canvas.paste(tile, (padding + j * (cell_w + padding), title_h + padding + i * (cell_h + padding)))
    return canvas


def _items(x: Any, name: str) -> list:
    """A sequence (or a batched tensor/array) as a list of its elements."""
    if hasattr(x, "detach") or isinstance(x, np.ndarray):
        return [x[k] for k in range(x.shape[0])]
    if isinstance(x, (str, bytes)) or not isinstance(x, Sequence):
        raise TypeError(f"{name} must be a sequence (or a batched tensor), got {type(x).__name__}.")
    return list(x)


_SWATCH_OUTLINE: Color = (100, 100, 100)  # not a palette colour (the VOC palette's values are multiples of 32)


def _check_class_names(class_names: Optional[Sequence[str]]) -> Optional[list[str]]:
    """``class_names`` as a list of strings, checked; ``None`` stays ``None``."""
    if class_names is None:
        return None
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
        raise TypeError(
            f"class_names must be a sequence of strings (one name per label), got {type(class_names).__name__}."
        )
    names = list(class_names)
    bad = [(k, type(n).__name__) for k, n in enumerate(names) if not isinstance(n, str)]
    if bad:
        k, kind = bad[0]
        raise TypeError(f"class_names must hold strings, but class_names[{k}] is of type {kind}.")
    if not names:
        raise ValueError("class_names is empty: give one name per label, class_names[k] naming label k.")
    return names


def _legend_labels(label_cols: Mapping[str, Sequence[Any]], num_names: int) -> bool:
    """Check that every label (other than 255) of the label maps has one of ``num_names`` names.

    Returns:
        Whether any label map holds void (255).
    """
    has_void = False
    for title, maps in label_cols.items():
        for k, labels in enumerate(maps):
            arr = _to_numpy(labels)
            void = arr == 255
            has_void = has_void or bool(void.any())
            named = arr[~void]
            if named.size and int(named.max()) >= num_names:
                raise ValueError(
                    f"column {title!r}: label map {k} holds label {int(named.max())} but class_names has only "
                    f"{num_names} names (labels 0..{num_names - 1}); give one name per label, class_names[k] "
                    "naming label k (e.g. the data set's class_names), or leave class_names out to draw no legend."
                )
    return has_void


def _with_legend(
    grid: Image.Image,
    entries: Sequence[tuple[tuple[int, ...], str]],
    *,
    padding: int = 4,
    background: Color = (255, 255, 255),
) -> Image.Image:
    """``grid`` with a legend strip below it: a swatch and a name per entry, in columns no wider than the grid.

    Every entry takes a column as wide as the widest one (swatch, gap, name); as many columns as fit in the
    grid's width are filled row after row. A swatch is a square of its colour as high as a line of text, in
    a one-pixel grey outline (so that light colours show on the background).
    """
    font = ImageFont.load_default()
    line_h = int(math.ceil(font.getbbox("Ag")[3]))
    swatch = max(line_h, 8)
    gap = padding  # between a swatch and its name
    avail = grid.width - 2 * padding  # the strip spans the grid's padding-to-padding width
    spacing = 3 * padding  # between columns
    measure = ImageDraw.Draw(grid)
    name_w = max(int(math.ceil(measure.textlength(name, font=font))) for _, name in entries)
    lead = 2 + swatch + gap  # swatch with its outline, then the gap before the name
    text_w = max(0, min(name_w, avail - lead))  # longer names are shortened with "..."
    col_w = lead + text_w + spacing
    num_cols = max(1, (avail + spacing) // col_w)
    row_h = swatch + 2 + padding
    num_rows = -(-len(entries) // num_cols)
    canvas = Image.new("RGB", (grid.width, grid.height + num_rows * row_h), tuple(background))
    canvas.paste(grid, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (colour, name) in enumerate(entries):
        r, c = divmod(i, num_cols)
        x, y = padding + c * col_w, grid.height + r * row_h
        draw.rectangle((x, y, x + swatch + 1, y + swatch + 1), fill=tuple(colour), outline=_SWATCH_OUTLINE)
        draw.text(
            (x + lead, y + 1 + (swatch - line_h) // 2), _fit_text(draw, name, font, text_w), fill=(0, 0, 0), font=font
        )
    return canvas


def save_prediction_grid(
    path: PathLike,
    images: Any,
    columns: Mapping[str, Any],
    gt: Optional[Any] = None,
    *,
    alpha: Optional[float] = None,
    scale: Optional[int] = None,
    void_color: Color = VOID_COLOR,
    class_names: Optional[Sequence[str]] = None,
) -> Path:
    """Save a grid comparing segmentations: one row per image, columns image | ground truth | each method.

    With ``class_names``, a colour legend is drawn below the grid: for every class, in index order, a swatch
    of the colour :func:`colorize_labels` gives its label followed by its name, in aligned columns wrapped
    over as many rows as needed to stay within the grid's width (names too long for a column are shortened
    with "..."); a last swatch labelled "void" is added when any label map holds 255. All classes are listed,
    not only those shown, so that grids of different runs read alike. With ``alpha``, the tiles blend these
    colours over the image while the swatches show them plain.

    Args:
        path: output image file (the format follows the extension, e.g. ``.png``); the parent folder is
            created if missing.
        images: ``N`` images (``(3, H, W)`` tensors on 0..255, ``(H, W, 3)`` uint8 arrays, ...) or a batched
            ``(N, 3, H, W)`` tensor.
        columns: ``{column title: N label maps (H, W)}`` in display order, e.g.
            ``{"CNN": ..., "CNN + dense CRF": ..., "CRF-RNN": ...}``; a batched ``(N, H, W)`` tensor works too.
        gt: ``N`` ground-truth label maps, or ``None`` to leave out that column.
        alpha: if given, label maps are blended over their image with this opacity; ``None`` draws plain
            palette colours.
        scale: integer up-scaling of the tiles; ``None`` picks the smallest one that makes tiles at least
            100 pixels wide, so that the titles fit.
        void_color: colour of void (255) pixels.
        class_names: names by label index (``class_names[k]`` names label ``k``), e.g. a data set's
            ``class_names``; ``None`` draws no legend. Every label in the label maps other than 255 must
            have a name.

    Returns:
        The path written.

    Raises:
        TypeError: ``class_names`` is not a sequence of strings.
        ValueError: a label map holds a label (other than 255) that has no name in ``class_names``.

    Example:
        >>> import tempfile
        >>> labels = [np.zeros((20, 20), np.int64)]
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = save_prediction_grid(Path(d) / "grid.png", [np.zeros((20, 20, 3), np.uint8)], {"CNN": labels})
        ...     Image.open(p).size  # image | CNN, 20-pixel tiles up-scaled 5 times, plus padding and titles
        (212, 124)
    """
    names = _check_class_names(class_names)
    image_list = _items(images, "images")
    if not image_list:
        raise ValueError("images is empty: give at least one image.")
    if not isinstance(columns, Mapping):
        raise TypeError(f"columns must be a mapping {{title: label maps}}, got {type(columns).__name__}.")
    label_cols: dict[str, list] = {}
    if gt is not None:
        label_cols["ground truth"] = _items(gt, "gt")
    for title, maps in columns.items():
        label_cols[str(title)] = _items(maps, f"columns[{title!r}]")
    for title, maps in label_cols.items():
        if len(maps) != len(image_list):
            raise ValueError(
                f"column {title!r} has {len(maps)} label maps for {len(image_list)} images; give one per image."
            )

    rows = []
    for k, image in enumerate(image_list):
        rgb = _as_rgb(image, f"images[{k}]")
        row = [rgb]
        for title, maps in label_cols.items():
            if alpha is None:
                tile = colorize_labels(maps[k], void_color=void_color)
            else:
                tile = label_overlay(rgb, maps[k], alpha, void_color=void_color)
            if tile.shape[:2] != rgb.shape[:2]:
                raise ValueError(
                    f"column {title!r}: label map {k} has size {tile.shape[:2]} but its image has size "
                    f"{rgb.shape[:2]} (H, W)."
                )
            row.append(tile)
        rows.append(row)
    if scale is None:
        max_w = max(r[0].shape[1] for r in rows)
        scale = min(8, max(1, -(-_MIN_TILE_WIDTH // max_w)))
    grid = picture_grid(rows, titles=["image", *label_cols], scale=scale)
    if names is not None:
        named = names[:255]  # label 255 is void
        swatches = colorize_labels(np.arange(len(named))[None])[0]  # the colours the tiles use
        entries = [(tuple(int(v) for v in swatches[k]), name) for k, name in enumerate(named)]
        if _legend_labels(label_cols, len(names)):
            entries.append((tuple(int(c) for c in void_color), "void"))
        grid = _with_legend(grid, entries)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_image(grid, path)
    return path
