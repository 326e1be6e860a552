# Copyright 2026 The modeling_croc Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Tests for CrocImageProcessor: official parity, every input mode and size, fuzzing, refusals, save/load."""

import io
import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from modeling_croc.image_processing_croc import CrocImageProcessor, expand_to_square, mean_fill_color


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "croc-tiny-official"


@pytest.fixture(scope="module")
def processor():
    return CrocImageProcessor()


def pixel_values(processor, image, **kwargs):
    return processor(image, return_tensors="pt", **kwargs)["pixel_values"]


def rgb_gradient(width=40, height=30):
    """A deterministic RGB image with distinct values in every channel."""
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), (xs + ys) % 256], axis=-1)
    return PIL.Image.fromarray(pixels.astype(np.uint8), mode="RGB")


# ----------------------------------------------------------------------------------------------- official parity


def test_reference_pixel_values_match_official_pipeline(processor):
    reference = torch.load(FIXTURES / "reference_image_processing.pt", weights_only=True)["pixel_values"]
    image = PIL.Image.open(FIXTURES / "image.png")
    output = pixel_values(processor, image)
    assert output.shape == reference.shape == (1, 3, 336, 336)
    assert (output - reference).abs().max().item() <= 1e-3


def test_loading_the_official_clip_config_keeps_parity():
    processor = CrocImageProcessor.from_pretrained(str(FIXTURES / "clip"))
    reference = torch.load(FIXTURES / "reference_image_processing.pt", weights_only=True)["pixel_values"]
    output = pixel_values(processor, str(FIXTURES / "image.png"))
    assert processor.image_aspect_ratio == "pad"
    assert (output - reference).abs().max().item() <= 1e-3


def test_fill_color_is_derived_from_image_mean(processor):
    assert mean_fill_color(processor.image_mean) == (122, 116, 104)
    assert mean_fill_color([0.5, 0.25, 1.0]) == (127, 63, 255)


def test_expand_to_square_centres_with_floor_offset():
    image = np.full((3, 2, 5), 7, dtype=np.uint8)  # height 2, width 5 -> offset (5 - 2) // 2 = 1 on top
    canvas = expand_to_square(image, (1, 2, 3))
    assert canvas.shape == (3, 5, 5)
    assert (canvas[:, 1:3, :] == 7).all()
    assert (canvas[:, 0, :] == np.array([1, 2, 3])[:, None]).all()
    assert (canvas[:, 3:, :] == np.array([1, 2, 3])[:, None, None]).all()
    tall = expand_to_square(np.zeros((3, 4, 1), dtype=np.uint8), (9, 9, 9))
    assert (tall[:, :, 1] == 0).all() and (tall[:, :, [0, 2, 3]] == 9).all()


def test_pad_mode_equals_clip_on_a_manually_padded_image(processor):
    image = rgb_gradient(41, 17)
    padded = expand_to_square(np.asarray(image).transpose(2, 0, 1), (122, 116, 104))
    clip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size=336)
    expected = clip(padded, input_data_format="channels_first", return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixel_values(processor, image), expected, rtol=0, atol=1e-6)


def test_square_mode_is_plain_clip(processor):
    image = rgb_gradient(64, 20)
    clip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size=336)
    expected = clip(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixel_values(processor, image, image_aspect_ratio="square"), expected)


def test_pad_without_resize_returns_the_square_canvas(processor):
    output = processor(rgb_gradient(40, 30), do_resize=False, do_center_crop=False, return_tensors="pt")
    assert output["pixel_values"].shape == (1, 3, 40, 40)


def test_unknown_aspect_ratio_is_refused(processor):
    with pytest.raises(ValueError, match="anyres"):
        CrocImageProcessor(image_aspect_ratio="anyres")
    with pytest.raises(ValueError, match="image_aspect_ratio"):
        processor(rgb_gradient(), image_aspect_ratio="crop")


# ---------------------------------------------------------------------------------------------- modes and sizes


def official_reference(image):
    """What the official pipeline makes of a PIL image: `.convert('RGB')`, pad, CLIP."""
    return pixel_values(CrocImageProcessor(), image.convert("RGB"))


@pytest.mark.parametrize("mode", ["L", "LA", "1", "P", "RGBA", "CMYK", "RGB", "YCbCr", "HSV"])
def test_pil_modes_match_convert_rgb(processor, mode):
    image = rgb_gradient().convert(mode)
    output = pixel_values(processor, image)
    assert output.shape == (1, 3, 336, 336)
    torch.testing.assert_close(output, official_reference(image), rtol=0, atol=0)


def test_rgba_alpha_is_dropped_not_composited(processor):
    pixels = np.zeros((30, 40, 4), dtype=np.uint8)
    pixels[..., 0] = 200
    pixels[..., 3] = 0  # fully transparent red
    output = pixel_values(processor, PIL.Image.fromarray(pixels, mode="RGBA"))
    torch.testing.assert_close(output, pixel_values(processor, PIL.Image.new("RGB", (40, 30), (200, 0, 0))))


def test_palette_with_transparency(processor):
    image = rgb_gradient().convert("P")
    image.info["transparency"] = 0
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    reloaded = PIL.Image.open(buffer)
    assert reloaded.mode == "P" and "transparency" in reloaded.info
    torch.testing.assert_close(pixel_values(processor, reloaded), official_reference(reloaded), rtol=0, atol=0)


def test_sixteen_bit_images_are_scaled_not_clipped(processor):
    grey = np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) % 256
    eight_bit = PIL.Image.fromarray(grey.astype(np.uint8), mode="L")
    sixteen_bit = PIL.Image.fromarray((grey * 257).astype(np.uint16))
    assert sixteen_bit.mode == "I;16"
    expected = pixel_values(processor, eight_bit)
    torch.testing.assert_close(pixel_values(processor, sixteen_bit), expected)
    as_int32 = PIL.Image.fromarray((grey * 257).astype(np.int32))
    assert as_int32.mode == "I"
    torch.testing.assert_close(pixel_values(processor, as_int32), expected)
    torch.testing.assert_close(pixel_values(processor, (grey * 257).astype(np.uint16)), expected)


def test_integer_and_float_modes(processor):
    grey = (np.arange(30 * 40).reshape(30, 40) % 256).astype(np.uint8)
    expected = pixel_values(processor, PIL.Image.fromarray(grey, mode="L"))
    eight_bit_int = PIL.Image.fromarray(grey.astype(np.int32))
    torch.testing.assert_close(pixel_values(processor, eight_bit_int), expected)
    float_255 = PIL.Image.fromarray(grey.astype(np.float32))
    assert float_255.mode == "F"
    torch.testing.assert_close(pixel_values(processor, float_255), expected)
    float_unit = PIL.Image.fromarray(grey.astype(np.float32) / 255.0)
    torch.testing.assert_close(pixel_values(processor, float_unit), expected)


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (7, 1), (2, 3), (336, 336), (500, 499)])
def test_small_and_odd_sizes(processor, size):
    output = pixel_values(processor, rgb_gradient(*size))
    assert output.shape == (1, 3, 336, 336) and torch.isfinite(output).all()


def test_one_pixel_image_becomes_uniform(processor):
    output = pixel_values(processor, PIL.Image.new("RGB", (1, 1), (10, 20, 30)))
    assert torch.allclose(output, output[:, :, :1, :1].expand_as(output))


@pytest.mark.parametrize("aspect_ratio", ["pad", "square"])
def test_extreme_aspect_ratio(processor, aspect_ratio):
    image = PIL.Image.new("RGB", (10000, 200), (255, 0, 0))
    output = pixel_values(processor, image, image_aspect_ratio=aspect_ratio)
    assert output.shape == (1, 3, 336, 336) and torch.isfinite(output).all()
    if aspect_ratio == "pad":  # top and bottom rows are the fill colour, the middle is the red band
        fill = (torch.tensor([122, 116, 104]) / 255 - torch.tensor(processor.image_mean)) / torch.tensor(
            processor.image_std
        )
        torch.testing.assert_close(output[0, :, 0, 0], fill.float(), rtol=0, atol=1e-5)
        assert output[0, 0, 168, 168] > output[0, 1, 168, 168]


def test_too_large_intermediate_is_refused(processor):
    with pytest.raises(ValueError, match="intermediate"):
        processor(np.zeros((1, 20000, 3), dtype=np.uint8), image_aspect_ratio="pad")
    with pytest.raises(ValueError, match="aspect ratio"):
        processor(np.zeros((2, 1_000_000, 3), dtype=np.uint8), image_aspect_ratio="square")


def exif_rotated_image():
    """A 40x30 gradient saved as JPEG-free PNG with EXIF orientation 6 (rotate 90 degrees clockwise to display)."""
    image = rgb_gradient(40, 30)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    return PIL.Image.open(buffer)


def test_exif_orientation_is_ignored_by_default_for_parity(processor):
    image = exif_rotated_image()
    torch.testing.assert_close(pixel_values(processor, image), pixel_values(processor, rgb_gradient(40, 30)))


def test_exif_orientation_can_be_applied(processor):
    image = exif_rotated_image()
    upright = PIL.ImageOps.exif_transpose(exif_rotated_image())
    assert upright.size == (30, 40)
    expected = pixel_values(processor, upright)
    torch.testing.assert_close(pixel_values(processor, image, apply_exif_orientation=True), expected)
    rotating = CrocImageProcessor(apply_exif_orientation=True)
    torch.testing.assert_close(pixel_values(rotating, image), expected)


# ------------------------------------------------------------------------------------------- arrays and tensors


def test_numpy_and_torch_inputs_agree_with_pil(processor):
    image = rgb_gradient()
    expected = pixel_values(processor, image)
    hwc = np.array(image)
    torch.testing.assert_close(pixel_values(processor, hwc), expected)
    torch.testing.assert_close(pixel_values(processor, hwc.astype(np.float32) / 255.0), expected)
    torch.testing.assert_close(pixel_values(processor, hwc.astype(np.float64)), expected)
    torch.testing.assert_close(pixel_values(processor, torch.from_numpy(hwc).permute(2, 0, 1)), expected)
    chw_float = torch.from_numpy(hwc).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(pixel_values(processor, chw_float), expected)
    torch.testing.assert_close(pixel_values(processor, chw_float.to(torch.bfloat16)).shape, expected.shape)
    chw_numpy = hwc.transpose(2, 0, 1)
    torch.testing.assert_close(pixel_values(processor, chw_numpy, input_data_format="channels_first"), expected)


def test_grey_arrays_and_batches(processor):
    grey = (np.arange(30 * 40).reshape(30, 40) % 256).astype(np.uint8)
    expected = pixel_values(processor, PIL.Image.fromarray(grey, mode="L"))
    torch.testing.assert_close(pixel_values(processor, grey), expected)
    torch.testing.assert_close(pixel_values(processor, grey[:, :, None]), expected)
    torch.testing.assert_close(pixel_values(processor, torch.from_numpy(grey)), expected)
    torch.testing.assert_close(pixel_values(processor, grey > 127).shape, expected.shape)
    batch = np.stack([np.asarray(rgb_gradient())] * 2)
    assert pixel_values(processor, batch).shape == (2, 3, 336, 336)
    assert pixel_values(processor, [[rgb_gradient()], [rgb_gradient(), grey]]).shape == (3, 3, 336, 336)


@pytest.mark.parametrize(
    ("bad_image", "message"),
    [
        (np.full((4, 4, 3), np.nan, dtype=np.float32), "NaN"),
        (np.full((4, 4, 3), -1.0), r"\[0, 1\] or \[0, 255\]"),
        (np.full((4, 4, 3), 300.0), r"\[0, 1\] or \[0, 255\]"),
        (np.full((4, 4, 3), -5, dtype=np.int16), "Integer pixel values"),
        (np.full((4, 4, 3), 70000, dtype=np.int64), "Integer pixel values"),
        (np.zeros((6, 6, 5), dtype=np.uint8), "channel axis"),
        (np.zeros((3, 5, 5, 5), dtype=np.uint8), "channel axis"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "empty"),
        (np.zeros((4, 0, 3), dtype=np.float32), "empty"),
        (np.zeros((4, 4, 3), dtype=np.complex64), "dtype"),
        (np.zeros((2, 2, 2, 2, 3), dtype=np.uint8), "dimensions"),
        (torch.zeros(1, 1, 1, 1, 1), "dimensions"),
        ("/nonexistent/croc/image.png", "Incorrect image source"),
        (12, "Unsupported image input"),
    ],
)
def test_bad_inputs_raise_clear_errors(processor, bad_image, message):
    with pytest.raises((ValueError, OSError, TypeError), match=message):
        processor(bad_image, return_tensors="pt")


def test_do_convert_rgb_false_needs_three_channels(processor):
    with pytest.raises(ValueError, match="3-channel"):
        processor(rgb_gradient().convert("L"), do_convert_rgb=False)
    with pytest.raises(ValueError, match="3-channel"):
        processor(np.zeros((8, 8, 4), dtype=np.uint8), do_convert_rgb=False)
    assert pixel_values(processor, rgb_gradient(), do_convert_rgb=False).shape == (1, 3, 336, 336)


# ----------------------------------------------------------------------------------------------------- fuzzing

FUZZ_MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F", "LAB", "HSV", "La", "RGBa"]


@st.composite
def random_pil_images(draw):
    mode = draw(st.sampled_from(FUZZ_MODES))
    width = draw(st.integers(1, 48))
    height = draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**16))
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = PIL.Image.fromarray(rgb, mode="RGB")
    if mode in ("I", "I;16", "F"):
        return image.convert("L").convert(mode)
    return image.convert(mode)


@st.composite
def random_arrays(draw):
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    channels = draw(st.sampled_from([None, 1, 2, 3, 4]))
    dtype = draw(st.sampled_from(["uint8", "uint16", "int32", "float32", "float64", "bool"]))
    shape = (height, width) if channels is None else (height, width, channels)
    values = np.random.default_rng(draw(st.integers(0, 2**16))).random(shape)
    scale = {"uint8": 255, "uint16": 65535, "int32": 255, "float32": 1, "float64": 255, "bool": 1}[dtype]
    array = (values * scale).round().astype(dtype) if dtype != "bool" else values > 0.5
    return torch.from_numpy(np.moveaxis(array, -1, 0).copy()) if draw(st.booleans()) and channels else array


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image=st.one_of(random_pil_images(), random_arrays()), aspect_ratio=st.sampled_from(["pad", "square"]))
def test_fuzz_any_mode_and_size_gives_finite_pixel_values(processor, image, aspect_ratio):
    output = pixel_values(processor, image, image_aspect_ratio=aspect_ratio)
    assert output.shape == (1, 3, 336, 336)
    assert output.dtype == torch.float32 and torch.isfinite(output).all()
    low = (0 - max(processor.image_mean)) / min(processor.image_std)
    high = (1 - min(processor.image_mean)) / min(processor.image_std)
    assert low - 1e-4 <= output.min().item() and output.max().item() <= high + 1e-4


# ------------------------------------------------------------------------------------------------- save / load


def test_save_and_load_round_trip(tmp_path):
    processor = CrocImageProcessor(image_aspect_ratio="square", apply_exif_orientation=True, crop_size=56)
    processor.save_pretrained(str(tmp_path))
    saved = (tmp_path / "preprocessor_config.json").read_text()
    assert '"image_aspect_ratio": "square"' in saved and '"image_processor_type": "CrocImageProcessor"' in saved
    reloaded = CrocImageProcessor.from_pretrained(str(tmp_path))
    assert reloaded.image_aspect_ratio == "square" and reloaded.apply_exif_orientation is True
    assert reloaded.crop_size["height"] == 56
    torch.testing.assert_close(pixel_values(reloaded, rgb_gradient()), pixel_values(processor, rgb_gradient()))
