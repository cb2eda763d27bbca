"""Qwen2-VL image preprocessing in numpy + PIL, without torch or transformers.

A port of transformers 5.3's slow ``Qwen2VLImageProcessor`` (image_processing_qwen2_vl.py):
convert to RGB, PIL bicubic resize on uint8 to a multiple of ``patch_size * merge_size``,
rescale through float64, normalise in float32, then cut the image into flattened
``(C, T, P, P)`` patches ordered so that each ``merge_size x merge_size`` block is contiguous.
Every step uses the same dtypes and the same PIL call as HF, so the output is bit-identical
(``np.array_equal``) to ``Qwen2VLImageProcessor()(images=..., return_tensors="np")``.

One deliberate difference: HF infers the channel axis from the array shape and takes an
(H, W, 3) image whose height is 1 or 3 pixels to be channels-first, which scrambles it. We
always treat our RGB arrays as channels-last, i.e. what HF does when given
``input_data_format="channels_last"``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np
import PIL.Image
import PIL.ImageOps

from ...errors import RagvlError, os_error_cause

# transformers.image_utils.OPENAI_CLIP_MEAN / OPENAI_CLIP_STD, the Qwen2-VL defaults.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# HF refuses images whose long side is more than this many times the short side.
MAX_ASPECT_RATIO = 200

ImageInput = Union[str, os.PathLike, PIL.Image.Image]


def _channel_tuple(value: Any, default: tuple[float, ...]) -> tuple[float, ...]:
    """A mean/std as a 3-tuple: HF repeats a scalar over the channels and treats None as the default."""
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    out = tuple(float(v) for v in value)
    if len(out) != 3:
        raise RagvlError(f"image mean/std must have 3 values (one per RGB channel), got {len(out)}")
    return out


@dataclass(frozen=True)
class ImageConfig:
    """The preprocessor settings of a Qwen2-VL checkpoint (its preprocessor_config.json)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True
    # PIL resampling filter; 3 is PIL.Image.Resampling.BICUBIC, HF's default for Qwen2-VL.
    resample: int = 3

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this: one merged token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ImageConfig":
        """Build from a preprocessor_config.json dict the way ``Qwen2VLImageProcessor.from_dict`` does.

        ``size`` (if present) must hold ``shortest_edge`` (= min pixels) and ``longest_edge``
        (= max pixels), else HF raises; top-level ``min_pixels`` / ``max_pixels`` then override
        it. So when both are given, the top-level keys win. A legacy
        ``size: {"min_pixels", "max_pixels"}`` is rejected, as transformers >= 4.50 does.
        Keys HF only stores as attributes (image_processor_type, processor_class, ...) are ignored.
        """
        size = d.get("size")
        if size is not None:
            if not isinstance(size, Mapping) or "shortest_edge" not in size or "longest_edge" not in size:
                raise RagvlError(
                    f"preprocessor config 'size' must contain 'shortest_edge' and 'longest_edge' keys, got {size!r}"
                )
            min_pixels, max_pixels = size["shortest_edge"], size["longest_edge"]
        else:
            min_pixels, max_pixels = cls.min_pixels, cls.max_pixels
        if d.get("min_pixels") is not None:
            min_pixels = d["min_pixels"]
        if d.get("max_pixels") is not None:
            max_pixels = d["max_pixels"]

        kwargs: dict[str, Any] = {}
        for key in ("patch_size", "temporal_patch_size", "merge_size", "resample"):
            if key in d:
                kwargs[key] = int(d[key])
        if "rescale_factor" in d:
            kwargs["rescale_factor"] = float(d["rescale_factor"])
        for key in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
            if key in d:
                # HF keeps the raw value and tests its truthiness; a JSON null therefore means off.
                kwargs[key] = bool(d[key])
        return cls(
            min_pixels=int(min_pixels),
            max_pixels=int(max_pixels),
            image_mean=_channel_tuple(d.get("image_mean"), OPENAI_CLIP_MEAN),
            image_std=_channel_tuple(d.get("image_std"), OPENAI_CLIP_STD),
            **kwargs,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ImageConfig":
        """Read a checkpoint's preprocessor_config.json (or a checkpoint directory holding one).

        A nested ``{"image_processor": {...}}`` (the newer processor_config.json layout) is
        unwrapped, as HF's loader does.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "preprocessor_config.json")
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, ValueError) as e:
            raise RagvlError(f"cannot read preprocessor config {path}: {e}") from e
        if not isinstance(d, dict):
            raise RagvlError(f"cannot read preprocessor config {path}: expected a JSON object")
        if isinstance(d.get("image_processor"), dict):
            d = d["image_processor"]
        try:
            return cls.from_dict(d)
        except (RagvlError, TypeError, ValueError) as e:
            raise RagvlError(f"bad preprocessor config {path}: {e}") from e


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
) -> tuple[int, int]:
    """The (height, width) HF resizes an image to: multiples of ``factor``, area in
    [min_pixels, max_pixels] (up to rounding), aspect ratio kept as closely as possible.

    Mirrors transformers' ``smart_resize`` line for line, including Python's round-half-to-even
    (a 42-pixel side rounds to 56, a 70-pixel side also to 56). Like transformers 5.3 there is
    no lower bound on the sides (tiny images are scaled up to ``min_pixels``); the only refusal
    is an aspect ratio above 200, plus empty images, on which HF would divide by zero.
    """
    if height <= 0 or width <= 0:
        raise RagvlError(f"image is empty ({width}x{height} pixels)")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise RagvlError(
            f"image is {width}x{height} pixels, aspect ratio {ratio:.1f} is over the {MAX_ASPECT_RATIO} Qwen2-VL accepts"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _describe(e: BaseException) -> str:
    """A short cause for a failed image read."""
    if isinstance(e, PIL.UnidentifiedImageError):
        return "not a recognised image format"
    if isinstance(e, OSError) and e.errno is not None:
        return os_error_cause(e)
    msg = str(e)
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def load_image(image: ImageInput) -> PIL.Image.Image:
    """Open an image file (or take a PIL image) and return it in RGB, as ``transformers.image_utils.load_image``.

    That is: apply the EXIF orientation, then ``convert("RGB")``. Note that for RGBA / LA / P
    with transparency this simply drops the alpha channel (the colour under transparent pixels
    shows through); Qwen2-VL does not composite on white (idefics/mllama do, Qwen2-VL does not).
    A missing, unreadable, truncated or non-image file raises RagvlError naming the file.
    """
    if isinstance(image, PIL.Image.Image):
        return PIL.ImageOps.exif_transpose(image).convert("RGB")
    if not isinstance(image, (str, os.PathLike)):
        raise RagvlError(f"expected an image path or PIL image, got {type(image).__name__}")
    path = os.fspath(image)
    try:
        # convert() forces the lazy decoder, so a truncated file fails here, inside the try.
        with PIL.Image.open(path) as im:
            return PIL.ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, PIL.Image.DecompressionBombError) as e:
        raise RagvlError(f"cannot read image {path}: {_describe(e)}") from e


def _to_rgb(image: ImageInput, cfg: ImageConfig) -> PIL.Image.Image:
    """HF's path for one input: a path goes through load_image, a PIL image through convert_to_rgb."""
    if not isinstance(image, PIL.Image.Image):
        return load_image(image)  # HF's fetch_images -> load_image, which always converts.
    if image.mode == "RGB":
        return image
    if cfg.do_convert_rgb:
        # transformers.image_transforms.convert_to_rgb: a plain convert, no EXIF transpose here.
        return image.convert("RGB")
    raise RagvlError(f"image mode {image.mode} is not RGB and do_convert_rgb is off")


def preprocess(image: ImageInput, cfg: ImageConfig = ImageConfig()) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Turn one image into Qwen2-VL vision-encoder input.

    Returns ``pixel_values``, float32 of shape (grid_h * grid_w, C * T * P * P), e.g. (N, 1176),
    and ``grid_thw = (1, grid_h, grid_w)`` in patches. Bit-identical to HF's
    ``Qwen2VLImageProcessor(...)(images=image, return_tensors="np")``.
    """
    name = None if isinstance(image, PIL.Image.Image) else os.fspath(image)
    img = _to_rgb(image, cfg)
    width, height = img.size
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size

    if cfg.do_resize:
        try:
            rh, rw = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
        except RagvlError as e:
            raise RagvlError(f"{name}: {e}" if name else str(e)) from None
        # HF resizes the uint8 array via PIL (to_pil_image does not rescale uint8), so the
        # resize runs on uint8 and rounds/clips back to uint8. PIL's resize to the same size is a copy.
        img = img.resize((rw, rh), resample=cfg.resample)
    else:
        rh, rw = height, width
        if rh % cfg.factor or rw % cfg.factor:
            raise RagvlError(f"with do_resize off the image sides must be multiples of {cfg.factor}, got {rw}x{rh}")

    x = np.asarray(img)  # (H, W, 3) uint8, channels last like HF's working format
    if cfg.do_rescale:
        # HF's rescale: upcast to float64, multiply, then downcast to float32.
        x = (x.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    if cfg.do_normalize:
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        mean = np.array(cfg.image_mean, dtype=x.dtype)
        std = np.array(cfg.image_std, dtype=x.dtype)
        x = (x - mean) / std  # float32 throughout, same ops as HF on channels-last
    x = x.astype(np.float32, copy=False)  # (H, W, C)

    gh, gw = rh // p, rw // p
    c = x.shape[-1]
    # HF reshapes (T, C, H, W) to (t, T, C, gh/m, m, P, gw/m, m, P) and transposes to
    # (t, gh/m, gw/m, m, m, C, T, P, P). From channels-last we get the same order; the single
    # frame is repeated T times along the temporal axis (HF pads by repeating the last frame).
    x = x.reshape(gh // m, m, p, gw // m, m, p, c)
    x = x.transpose(0, 3, 1, 4, 6, 2, 5)  # (gh/m, gw/m, m, m, C, P, P)
    x = np.broadcast_to(x[:, :, :, :, :, None], x.shape[:5] + (t, p, p))  # (gh/m, gw/m, m, m, C, T, P, P)
    pixel_values = x.reshape(gh * gw, c * t * p * p)  # (N, 1176), a fresh contiguous copy
    return pixel_values, (1, gh, gw)


def preprocess_many(
    images: Iterable[ImageInput], cfg: ImageConfig = ImageConfig()
) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Preprocess several images as HF does for a list: patch rows concatenated in order,
    one ``grid_thw`` per image. Returns (pixel_values (sum N_i, 1176), [grid_thw, ...])."""
    rows, grids = [], []
    for image in images:
        pv, grid = preprocess(image, cfg)
        rows.append(pv)
        grids.append(grid)
    if not rows:
        raise RagvlError("no images to preprocess")
    return np.concatenate(rows, axis=0), grids


def num_image_tokens(grid_thw: Sequence[int], merge_size: int = 2) -> int:
    """How many <|image_pad|> tokens the image takes in the prompt: t*h*w // merge_size**2."""
    t, h, w = (int(v) for v in grid_thw)
    return t * h * w // merge_size**2
