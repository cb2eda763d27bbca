"""Parity of ragvl.models.runtime.preprocess with transformers' slow Qwen2VLImageProcessor.

The reference is built directly (no checkpoint needed). Parity means np.array_equal on
pixel_values (float32) and equal grids, not a tolerance. The parity tests are marked
`reference`; the error, config-file and import tests run without transformers.
"""

from __future__ import annotations

import functools
import io
import json

import numpy as np
import PIL.Image
import pytest

from ragvl.errors import RagvlError
from tiny_hub import preprocessor_config
from ragvl.models.runtime.preprocess import (
    ImageConfig,
    load_image,
    num_image_tokens,
    preprocess,
    preprocess_many,
    smart_resize,
)

DEFAULT = (56 * 56, 28 * 28 * 1280)  # Qwen2VLImageProcessor's own defaults
COLQWEN2 = (56 * 56, 602112)  # ColQwen2Processor: max_pixels = 768 * 28 * 28
HUB = (3136, 12845056)  # Qwen/Qwen2-VL-*-Instruct preprocessor_config.json
SMALL = (56 * 56, 256 * 28 * 28)
BIG_MIN = (256 * 28 * 28, 1280 * 28 * 28)  # pushes small images up through the min_pixels branch
SETTINGS = {"default": DEFAULT, "colqwen2": COLQWEN2, "hub": HUB, "small": SMALL, "big_min": BIG_MIN}


# transformers is imported only by the tests that compare with it (marked `reference`).


def hf_image_processor_class():
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor


def hf_smart_resize(*args):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    return smart_resize(*args)


@functools.lru_cache(maxsize=None)
def hf_processor(min_pixels: int, max_pixels: int, **kw):
    return hf_image_processor_class()(min_pixels=min_pixels, max_pixels=max_pixels, **kw)


def noise(h: int, w: int, seed: int = 0, mode: str = "RGB") -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2, "CMYK": 4}[mode]
    a = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    return PIL.Image.fromarray(a[..., 0] if channels == 1 else a, mode=mode)


def gradient(h: int, w: int) -> PIL.Image.Image:
    """Smooth ramps: bicubic over/undershoot and rounding show up differently than on noise."""
    y = np.linspace(0, 255, h).round().astype(np.uint8)[:, None]
    x = np.linspace(0, 255, w).round().astype(np.uint8)[None, :]
    a = np.empty((h, w, 3), dtype=np.uint8)
    a[..., 0], a[..., 1] = y, x
    a[..., 2] = (y.astype(np.uint16) + x) // 2
    return PIL.Image.fromarray(a, mode="RGB")


def assert_parity(image, pixels=DEFAULT, hf_kwargs=None, **cfg_kwargs):
    cfg = ImageConfig(min_pixels=pixels[0], max_pixels=pixels[1], **cfg_kwargs)
    ref = hf_processor(*pixels, **cfg_kwargs)(images=image, return_tensors="np", **(hf_kwargs or {}))
    pv, grid = preprocess(image, cfg)
    assert pv.dtype == np.float32
    assert grid == tuple(int(v) for v in ref["image_grid_thw"][0])
    assert pv.shape == ref["pixel_values"].shape
    assert np.array_equal(pv, ref["pixel_values"])
    assert pv.shape[0] == grid[0] * grid[1] * grid[2]
    return pv, grid


# (height, width); heights of 1 and 3 are left out: see test_hf_channel_ambiguity_heights.
SIZES = [
    (28, 28), (30, 57), (11, 300), (2, 2), (5, 7), (14, 14), (56, 56),
    (42, 70), (70, 42), (41, 43), (84, 98),  # round-half-to-even at 1.5 and 2.5 factors
    (500, 333), (777, 1111),  # not multiples of 28
    (1024, 683), (683, 1024),  # a rendered page, portrait and landscape
    (10, 2000), (2000, 10), (28, 5600), (15, 3000),  # aspect ratio 200 exactly: still accepted
]  # huge images: test_parity_huge_downscaled


@pytest.mark.reference
@pytest.mark.parametrize("h,w", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_parity_noise_default(h, w):
    assert_parity(noise(h, w, seed=h * 7919 + w))


@pytest.mark.reference
@pytest.mark.parametrize("h,w", [(30, 57), (1024, 683), (683, 1024), (3000, 4000), (97, 19000)])
def test_parity_gradient(h, w):
    assert_parity(gradient(h, w))


@pytest.mark.reference
@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("h,w", [(11, 300), (30, 57), (500, 333), (1024, 683), (700, 1900)])
def test_parity_pixel_settings(setting, h, w):
    assert_parity(noise(h, w, seed=3), SETTINGS[setting])


@pytest.mark.reference
@pytest.mark.parametrize("pixels", [DEFAULT, COLQWEN2], ids=["default", "colqwen2"])
def test_parity_huge_downscaled(pixels):
    pv, grid = assert_parity(noise(4000, 3000, seed=1), pixels)
    assert grid[1] * grid[2] * 14 * 14 <= pixels[1]


@pytest.mark.reference
def test_parity_extreme_aspect_over_max_pixels():
    # ratio 200 with more than max_pixels: the max_pixels branch clamps the short side to 28.
    pv, grid = assert_parity(noise(100, 20000, seed=2), COLQWEN2)
    assert grid[1] == 2


@pytest.mark.reference
@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "CMYK"])
def test_parity_modes(mode):
    assert_parity(noise(300, 211, seed=5, mode=mode))


@pytest.mark.reference
def test_parity_palette_and_bilevel():
    base = noise(257, 190, seed=6)
    pal = base.quantize(colors=64)
    pal.info["transparency"] = 3  # one palette index marked transparent
    for img in (base.quantize(colors=16), pal, base.convert("1")):
        assert_parity(img)


@pytest.mark.reference
def test_alpha_is_dropped_not_composited_on_white():
    # Qwen2-VL's convert_to_rgb is a plain convert("RGB"): a fully transparent black image
    # stays black (idefics/mllama would composite it on white).
    rgba = PIL.Image.new("RGBA", (56, 56), (0, 0, 0, 0))
    pv_rgba, _ = assert_parity(rgba)
    pv_black, _ = preprocess(PIL.Image.new("RGB", (56, 56), (0, 0, 0)))
    assert np.array_equal(pv_rgba, pv_black)
    assert load_image(rgba).getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.reference
def test_parity_many_images():
    images = [noise(1024, 683, seed=1), gradient(30, 57), noise(200, 900, seed=2, mode="RGBA")]
    cfg = ImageConfig(min_pixels=COLQWEN2[0], max_pixels=COLQWEN2[1])
    ref = hf_processor(*COLQWEN2)(images=images, return_tensors="np")
    pv, grids = preprocess_many(images, cfg)
    assert grids == [tuple(int(v) for v in g) for g in ref["image_grid_thw"]]
    assert np.array_equal(pv, ref["pixel_values"])
    # rows are laid out image after image
    first, _ = preprocess(images[0], cfg)
    assert np.array_equal(pv[: len(first)], first)


@pytest.mark.reference
def test_parity_from_path_with_exif_orientation(tmp_path):
    # A path goes through HF's load_image, which applies the EXIF orientation.
    img = noise(120, 300, seed=9)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=90)
    assert load_image(path).size == (120, 300)
    ref = hf_processor(*DEFAULT)(images=str(path), return_tensors="np")
    pv, grid = preprocess(str(path))
    assert grid == tuple(int(v) for v in ref["image_grid_thw"][0])
    assert np.array_equal(pv, ref["pixel_values"])
    assert np.array_equal(preprocess(path)[0], pv)  # pathlib works too


@pytest.mark.reference
def test_parity_png_path(tmp_path):
    path = tmp_path / "page.png"
    noise(683, 1024, seed=4, mode="RGBA").save(path)
    ref = hf_processor(*DEFAULT)(images=str(path), return_tensors="np")
    assert np.array_equal(preprocess(str(path))[0], ref["pixel_values"])


@pytest.mark.reference
def test_parity_other_patch_settings():
    assert_parity(noise(300, 450, seed=8), temporal_patch_size=1)
    assert_parity(noise(300, 450, seed=8), do_normalize=False)
    assert_parity(noise(112, 168, seed=8), do_resize=False)


@pytest.mark.reference
@pytest.mark.parametrize("h", [1, 3])
def test_hf_channel_ambiguity_heights(h):
    # HF infers the channel axis from the shape and reads an (h, W, 3) array with h in (1, 3)
    # as channels-first: a 3-row image comes out transposed, a 1-row one crashes. We always
    # treat it as channels-last, which is exactly HF told input_data_format="channels_last".
    img = noise(h, 100, seed=h)
    pv, grid = assert_parity(img, hf_kwargs={"input_data_format": "channels_last"})
    assert grid[1] < grid[2]  # wide stays wide


@pytest.mark.reference
def test_smart_resize_matches_hf():
    rng = np.random.default_rng(0)
    sides = list(rng.integers(1, 5000, 300)) + [1, 2, 13, 14, 27, 28, 29, 42, 70, 98, 4096]
    settings = list(SETTINGS.values()) + [(1, 10**9), (28 * 28, 28 * 28)]
    for i, h in enumerate(sides):
        for w in (sides[(i * 7 + 3) % len(sides)], int(h) // 150 + 1, int(h) * 199 + 1, int(h) * 201):
            for factor in (28, 32):
                for lo, hi in settings:
                    h, w = int(h), int(w)
                    try:
                        ref = hf_smart_resize(h, w, factor, lo, hi)
                    except ValueError:
                        with pytest.raises(RagvlError):
                            smart_resize(h, w, factor, lo, hi)
                        continue
                    assert smart_resize(h, w, factor, lo, hi) == ref, (h, w, factor, lo, hi)


def test_smart_resize_errors():
    with pytest.raises(RagvlError, match="aspect ratio"):
        smart_resize(10, 2001)
    with pytest.raises(RagvlError, match="empty"):
        smart_resize(0, 10)
    assert smart_resize(10, 2000) == (28, 812)  # exactly 200 is allowed (as in HF: test_smart_resize_matches_hf)


def test_num_image_tokens():
    pv, grid = preprocess(noise(1024, 683))
    assert grid == (1, 74, 48)
    assert num_image_tokens(grid, 2) == 74 * 48 // 4 == pv.shape[0] // 4
    assert num_image_tokens(np.array([1, 4, 6]), 2) == 6


# ---- errors -------------------------------------------------------------------------------


def _one_line_error(excinfo, path):
    msg = str(excinfo.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_error_aspect_ratio_names_file(tmp_path):
    path = tmp_path / "strip.png"
    noise(10, 2001).save(path)
    with pytest.raises(RagvlError, match="aspect ratio") as ei:
        preprocess(str(path))
    _one_line_error(ei, path)
    with pytest.raises(RagvlError, match="aspect ratio"):
        preprocess(noise(2001, 10))


def test_error_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(RagvlError) as ei:
        load_image(path)
    assert "no such file" in _one_line_error(ei, path)
    with pytest.raises(RagvlError):
        preprocess(str(path))


def test_error_non_image_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not\nan image\n")
    with pytest.raises(RagvlError) as ei:
        preprocess(path)
    assert "not a recognised image" in _one_line_error(ei, path)


def test_error_corrupt_file(tmp_path):
    buf = io.BytesIO()
    noise(200, 200).save(buf, format="PNG")
    path = tmp_path / "truncated.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(RagvlError) as ei:
        load_image(str(path))
    _one_line_error(ei, path)


def test_error_directory(tmp_path):
    with pytest.raises(RagvlError) as ei:
        load_image(tmp_path)
    _one_line_error(ei, tmp_path)


# ---- config -------------------------------------------------------------------------------

# Qwen2-VL-2B-Instruct's preprocessor_config.json.
HUB_CONFIG = preprocessor_config(min_pixels=3136, max_pixels=12845056)


def _assert_config_like_hf(d):
    import copy

    hf = hf_image_processor_class().from_dict(copy.deepcopy(d))  # HF mutates a nested size dict
    cfg = ImageConfig.from_dict(d)
    assert (cfg.min_pixels, cfg.max_pixels) == (hf.min_pixels, hf.max_pixels)
    assert (cfg.min_pixels, cfg.max_pixels) == (hf.size["shortest_edge"], hf.size["longest_edge"])
    assert (cfg.patch_size, cfg.temporal_patch_size, cfg.merge_size) == (
        hf.patch_size, hf.temporal_patch_size, hf.merge_size)
    mean = hf.image_mean if isinstance(hf.image_mean, list) else [hf.image_mean] * 3
    std = hf.image_std if isinstance(hf.image_std, list) else [hf.image_std] * 3
    assert cfg.image_mean == tuple(mean) and cfg.image_std == tuple(std)
    assert cfg.rescale_factor == hf.rescale_factor and cfg.resample == int(hf.resample)
    return cfg, hf


@pytest.mark.reference
@pytest.mark.parametrize(
    "d",
    [
        HUB_CONFIG,
        {"size": {"shortest_edge": 3136, "longest_edge": 602112}},
        # both given: the top-level keys override size
        {**HUB_CONFIG, "size": {"shortest_edge": 100, "longest_edge": 200}},
        {"size": {"shortest_edge": 100, "longest_edge": 200}, "min_pixels": 5000, "max_pixels": None},
        {"image_mean": 0.5, "image_std": None},
        {},
    ],
    ids=["hub", "size_only", "both", "min_only_override", "scalar_mean", "empty"],
)
def test_config_from_dict_like_hf(d):
    _assert_config_like_hf(d)


@pytest.mark.reference
def test_config_hub_dict_gives_same_pixels():
    cfg, hf = _assert_config_like_hf(HUB_CONFIG)
    img = noise(1024, 683, seed=11)
    ref = hf(images=img, return_tensors="np")
    assert np.array_equal(preprocess(img, cfg)[0], ref["pixel_values"])


@pytest.mark.reference
def test_config_legacy_size_rejected_like_hf():
    # transformers >= 4.50 rejects the size dict older versions saved, even with top-level keys.
    d = {**HUB_CONFIG, "size": {"min_pixels": 3136, "max_pixels": 12845056}}
    with pytest.raises(ValueError, match="shortest_edge"):
        hf_image_processor_class().from_dict(d)
    with pytest.raises(RagvlError, match="shortest_edge"):
        ImageConfig.from_dict(d)


def test_config_from_file(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(HUB_CONFIG))
    assert ImageConfig.from_file(tmp_path / "preprocessor_config.json") == ImageConfig.from_dict(HUB_CONFIG)
    assert ImageConfig.from_file(tmp_path).max_pixels == 12845056
    nested = tmp_path / "processor_config.json"
    nested.write_text(json.dumps({"image_processor": {**HUB_CONFIG, "max_pixels": 602112}}))
    assert ImageConfig.from_file(nested).max_pixels == 602112
    with pytest.raises(RagvlError, match="missing.json"):
        ImageConfig.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RagvlError, match="bad.json"):
        ImageConfig.from_file(bad)


@pytest.mark.reference
def test_defaults_match_hf():
    hf = hf_image_processor_class()()
    cfg = ImageConfig()
    assert (cfg.min_pixels, cfg.max_pixels) == (hf.min_pixels, hf.max_pixels)
    assert list(cfg.image_mean) == list(hf.image_mean) and list(cfg.image_std) == list(hf.image_std)
    assert cfg.rescale_factor == hf.rescale_factor and cfg.resample == int(hf.resample)
