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
"""Image processor for Croc: the official LLaVA-1.5 pad-to-square + CLIP pipeline on the PIL backend."""

import os

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
from transformers.image_utils import ChannelDimension, PILImageResampling, get_image_size_for_max_height_width
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.processing_utils import ImagesKwargs, Unpack


SUPPORTED_ASPECT_RATIOS = ("pad", "square")

# Largest intermediate image (padded canvas or resized image) we agree to build, in pixels. A 10000 x 200 image pads
# to a 10000 x 10000 canvas (1e8 pixels, ~300 MB); anything much larger is almost surely a mistake.
MAX_WORKING_PIXELS = 2**27

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class CrocImageProcessorKwargs(ImagesKwargs, total=False):
    """
    image_aspect_ratio (`str`, *optional*, defaults to `"pad"`):
        `"pad"` pastes the image centred on a square canvas filled with the mean colour before the CLIP steps
        (official stages 1.5, 2 and inference); `"square"` runs the plain CLIP steps (official stage 1).
    apply_exif_orientation (`bool`, *optional*, defaults to `False`):
        Rotate/flip PIL images according to their EXIF orientation tag first. The official pipeline does not, so
        the default keeps parity with the released weights.
    """

    image_aspect_ratio: str | None
    apply_exif_orientation: bool | None


def mean_fill_color(image_mean) -> tuple[int, ...]:
    """The padding colour of the official pipeline: `int(255 * mean)` per channel, i.e. (122, 116, 104) for CLIP."""
    if isinstance(image_mean, (int, float)):
        image_mean = [image_mean] * 3
    return tuple(int(channel_mean * 255) for channel_mean in image_mean)


def expand_to_square(image: np.ndarray, fill_color: tuple[int, ...]) -> np.ndarray:
    """Paste a channels-first image centred on a square canvas of side = its longer edge, filled with `fill_color`."""
    num_channels, height, width = image.shape
    if height == width:
        return image
    side = max(height, width)
    canvas = np.empty((num_channels, side, side), dtype=image.dtype)
    canvas[:] = np.asarray(fill_color, dtype=image.dtype).reshape(num_channels, 1, 1)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[:, top : top + height, left : left + width] = image
    return canvas


def is_croc_image(obj) -> bool:
    """Whether `obj` is a single image this processor understands (PIL image, 2-D/3-D array or tensor)."""
    if isinstance(obj, PIL.Image.Image):
        return True
    return isinstance(obj, (np.ndarray, torch.Tensor)) and obj.ndim in (2, 3)


def flatten_images(images) -> list:
    """
    Turn one image, a list of images, a nested list (one list per sample) or a 4-D batch array/tensor into a flat list.

    Raises a `ValueError` naming the offending object for anything else.
    """
    if is_croc_image(images):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == 4:
            return list(images)
        raise ValueError(
            f"Images given as arrays/tensors must have 2 (H, W), 3 (one image) or 4 (a batch) dimensions, "
            f"got shape {tuple(images.shape)}."
        )
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in flatten_images(item)]
    raise ValueError(
        f"Unsupported image input of type {type(images).__name__}: expected a PIL image, a numpy array, a torch "
        "tensor, a path, or a (nested) list of these."
    )


def sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map 16-bit data [0, 65535] to 8 bits with rounding (65535 -> 255)."""
    return np.round(values.astype(np.float64) / 257.0).astype(np.uint8)


def integers_to_uint8(values: np.ndarray) -> np.ndarray:
    """Integer pixels: [0, 255] kept, up to 65535 treated as 16-bit, anything else refused."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.uint16:
        return sixteen_bit_to_uint8(values)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise ValueError(
            f"Integer pixel values must lie in [0, 255] (8-bit) or [0, 65535] (16-bit), got range [{low}, {high}]."
        )
    if high > 255:
        return sixteen_bit_to_uint8(values)
    return values.astype(np.uint8)


def floats_to_uint8(values: np.ndarray) -> np.ndarray:
    """Float pixels: [0, 1] scaled by 255, otherwise [0, 255] taken as is; NaN/inf or other ranges refused."""
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("Float image contains NaN or infinite values.")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise ValueError(f"Float pixel values must lie in [0, 1] or [0, 255], got range [{low:g}, {high:g}].")
    if high <= 1.0:
        values = values * 255.0
    return np.round(values).astype(np.uint8)


def array_to_uint8(values: np.ndarray) -> np.ndarray:
    """Convert bool, integer or float pixel data to uint8 with a documented, explicit rule per dtype."""
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if np.issubdtype(values.dtype, np.integer):
        return integers_to_uint8(values)
    if np.issubdtype(values.dtype, np.floating):
        return floats_to_uint8(values)
    raise ValueError(f"Unsupported image dtype {values.dtype}: expected bool, integer or float pixel data.")


def pil_to_rgb_array(image: PIL.Image.Image, apply_exif_orientation: bool = False) -> np.ndarray:
    """
    Convert a PIL image to an `(H, W, 3)` uint8 array like the official `Image.open(path).convert("RGB")`.

    Alpha is dropped, not composited (as `convert("RGB")` does). High bit-depth modes, which `convert("RGB")` would
    clip to white, are scaled to 8 bits instead (`I;16*` by 1/257; `I` and `F` by the rules of `array_to_uint8`).
    """
    if apply_exif_orientation:
        image = PIL.ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        values = np.asarray(image)
        if image.mode in SIXTEEN_BIT_MODES:
            values = values.astype(np.uint16)
        grey = array_to_uint8(values)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(convert_pil_to_rgb(image))


def convert_pil_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """`image.convert("RGB")`, going through RGBA or LA for the few modes PIL cannot convert directly (e.g. "La")."""
    for intermediate_mode in (None, "RGBA", "LA"):
        try:
            source = image if intermediate_mode is None else image.convert(intermediate_mode)
            return source.convert("RGB")
        except ValueError:
            continue
    raise ValueError(f"PIL image mode {image.mode!r} cannot be converted to RGB.")


def channels_last(values: np.ndarray, input_data_format, prefer_channels_first: bool) -> np.ndarray:
    """Return a 3-D `(H, W, C)` view of a 2-D or 3-D array, inferring the channel axis when it is not given."""
    if values.ndim == 2:
        return values[:, :, None]
    if input_data_format is not None:
        is_first = ChannelDimension(input_data_format) == ChannelDimension.FIRST
        return np.moveaxis(values, 0, -1) if is_first else values
    first_ok, last_ok = values.shape[0] in (1, 2, 3, 4), values.shape[-1] in (1, 2, 3, 4)
    if not (first_ok or last_ok):
        raise ValueError(
            f"Cannot tell the channel axis of an image of shape {tuple(values.shape)}: one of the first or last "
            "dimension must be 1, 2, 3 or 4 channels (or pass `input_data_format`)."
        )
    is_first = first_ok and (prefer_channels_first or not last_ok)
    return np.moveaxis(values, 0, -1) if is_first else values


def hwc_to_rgb(values: np.ndarray) -> np.ndarray:
    """Grey (1), grey+alpha (2), RGB (3) or RGBA (4) channels to RGB; alpha dropped as PIL's `convert("RGB")`."""
    num_channels = values.shape[-1]
    if num_channels in (1, 2):
        return np.repeat(values[:, :, :1], 3, axis=2)
    if num_channels in (3, 4):
        return values[:, :, :3]
    raise ValueError(f"Images must have 1, 2, 3 or 4 channels, got {num_channels}.")


def array_to_hwc_uint8(values, input_data_format=None) -> np.ndarray:
    """A numpy array (channels-last by default) or torch tensor (channels-first by default) as `(H, W, C)` uint8."""
    is_tensor = isinstance(values, torch.Tensor)
    if is_tensor:
        values = values.detach().cpu()
        if values.is_floating_point() and values.dtype != torch.float64:
            values = values.float()
        values = values.numpy()
    if values.ndim not in (2, 3):
        raise ValueError(f"A single image must have 2 or 3 dimensions, got shape {tuple(values.shape)}.")
    values = channels_last(values, input_data_format, prefer_channels_first=is_tensor)
    if values.size == 0:
        raise ValueError(f"Image has an empty dimension: shape {tuple(values.shape)}.")
    return array_to_uint8(values)


class CrocImageProcessor(CLIPImageProcessorPil):
    r"""
    Croc image processor: the official LLaVA-1.5 / Croc preprocessing on transformers' PIL backend (no torchvision).

    With `image_aspect_ratio="pad"` (default) each image is pasted centred (offset `(long - short) // 2`) on a square
    canvas of side = its longer edge, filled with `int(255 * image_mean)` per channel ((122, 116, 104) for CLIP). Then
    the CLIP steps run: resize the shortest edge to `size["shortest_edge"]` (bicubic), centre-crop `crop_size`,
    rescale by 1/255 and normalise. `image_aspect_ratio="square"` runs the CLIP steps only (official stage 1).

    Inputs may be PIL images of any mode (alpha is dropped like `convert("RGB")`; 16-bit and float modes are scaled to
    8 bits), numpy arrays (channels-last unless `input_data_format` says otherwise) or torch tensors (channels-first
    unless told otherwise), as uint8, uint16 (16-bit), other integers in [0, 255], floats in [0, 1] or [0, 255], or
    bool. Anything else raises a `ValueError` that names the problem.

    Args:
        image_aspect_ratio (`str`, *optional*, defaults to `"pad"`):
            `"pad"` or `"square"`, see above.
        apply_exif_orientation (`bool`, *optional*, defaults to `False`):
            Apply the EXIF orientation tag of PIL images first. Off by default because the official training pipeline
            never did, so the released weights saw unrotated pixels.
        **kwargs:
            The CLIP image processor arguments (`size`, `crop_size`, `resample`, `image_mean`, `image_std`, ...).
    """

    valid_kwargs = CrocImageProcessorKwargs
    size = {"shortest_edge": 336}
    crop_size = {"height": 336, "width": 336}
    image_aspect_ratio = "pad"
    apply_exif_orientation = False
    model_input_names = ["pixel_values"]

    def __init__(self, **kwargs: Unpack[CrocImageProcessorKwargs]):
        super().__init__(**kwargs)
        self._check_aspect_ratio(self.image_aspect_ratio)

    @staticmethod
    def _check_aspect_ratio(image_aspect_ratio: str) -> None:
        if image_aspect_ratio not in SUPPORTED_ASPECT_RATIOS:
            raise ValueError(
                f"image_aspect_ratio must be one of {SUPPORTED_ASPECT_RATIOS}, got {image_aspect_ratio!r} "
                "(Croc has no 'anyres' mode)."
            )

    def fetch_images(self, image_url_or_urls):
        """Open local image paths with PIL as they are (no EXIF rotation, no mode change); URLs go to transformers.

        Other objects pass through unchanged and are validated later.
        """
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, (str, os.PathLike)) and os.path.isfile(image_url_or_urls):
            image = PIL.Image.open(image_url_or_urls)
            image.load()
            return image
        if isinstance(image_url_or_urls, os.PathLike):
            raise ValueError(f"Image file not found: {os.fspath(image_url_or_urls)}")
        if isinstance(image_url_or_urls, str):
            return super().fetch_images(image_url_or_urls)
        return image_url_or_urls

    def _prepare_images_structure(self, images, expected_ndims: int = 3) -> list:
        return flatten_images(self.fetch_images(images))

    def process_image(
        self,
        image,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        apply_exif_orientation: bool | None = None,
        **kwargs,
    ) -> np.ndarray:
        """
        Convert one input image to a channels-first `(3, H, W)` uint8 array.

        Args:
            image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`):
                The image.
            do_convert_rgb (`bool`, *optional*):
                Convert grey/alpha/other modes to RGB (default). When false, images must already have 3 channels.
            input_data_format (`ChannelDimension` or `str`, *optional*):
                Channel layout of array/tensor inputs, inferred when not given.
            apply_exif_orientation (`bool`, *optional*):
                Apply the EXIF orientation of PIL images first.
        """
        if apply_exif_orientation is None:
            apply_exif_orientation = self.apply_exif_orientation
        if isinstance(image, PIL.Image.Image):
            self._check_channels_when_not_converting(len(image.getbands()), do_convert_rgb)
            rgb = pil_to_rgb_array(image, apply_exif_orientation=apply_exif_orientation)
        elif isinstance(image, (np.ndarray, torch.Tensor)):
            pixels = array_to_hwc_uint8(image, input_data_format=input_data_format)
            self._check_channels_when_not_converting(pixels.shape[-1], do_convert_rgb)
            rgb = hwc_to_rgb(pixels)
        else:
            raise ValueError(f"Unsupported image type {type(image).__name__}: expected a PIL image, array or tensor.")
        height, width = rgb.shape[:2]
        if height == 0 or width == 0:
            raise ValueError(f"Image has an empty dimension: height={height}, width={width}.")
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))

    @staticmethod
    def _check_channels_when_not_converting(num_channels: int, do_convert_rgb: bool | None) -> None:
        if do_convert_rgb is False and num_channels != 3:
            raise ValueError(f"do_convert_rgb=False needs 3-channel images, got {num_channels} channel(s).")

    def _check_working_size(self, height: int, width: int, image_aspect_ratio: str, size) -> None:
        """Refuse images whose padded canvas or resized intermediate would exceed `MAX_WORKING_PIXELS`."""
        if image_aspect_ratio == "pad":
            height = width = max(height, width)
        intermediate_shapes = [(height, width)]
        shortest_edge = getattr(size, "shortest_edge", None)
        if shortest_edge:
            scale = shortest_edge / min(height, width)
            intermediate_shapes.append((int(height * scale), int(width * scale)))
        for inter_height, inter_width in intermediate_shapes:
            if inter_height * inter_width > MAX_WORKING_PIXELS:
                raise ValueError(
                    f"Processing this image would build a {inter_height} x {inter_width} intermediate "
                    f"({inter_height * inter_width} pixels), above the limit of {MAX_WORKING_PIXELS}: its size or "
                    "aspect ratio is too extreme. Crop or downscale it first."
                )

    @staticmethod
    def _resized_shape(height: int, width: int, size) -> tuple[int, int]:
        """The `(height, width)` the backend's `resize` gives a `height x width` image, from the shape alone."""
        if size.shortest_edge and size.longest_edge:
            return get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge)
        if size.shortest_edge:
            shape_only = np.broadcast_to(np.zeros((), dtype=np.uint8), (3, height, width))
            return get_resize_output_image_size(
                shape_only, size=size.shortest_edge, default_to_square=False, input_data_format=ChannelDimension.FIRST
            )
        if size.max_height and size.max_width:
            return get_image_size_for_max_height_width((height, width), size.max_height, size.max_width)
        if size.height and size.width:
            return size.height, size.width
        raise ValueError(f"Unsupported size {dict(size)}: use shortest_edge, height/width or max_height/max_width.")

    def output_image_size(
        self,
        height: int,
        width: int,
        image_aspect_ratio: str | None = None,
        do_resize: bool | None = None,
        size=None,
        do_center_crop: bool | None = None,
        crop_size=None,
        **kwargs,
    ) -> tuple[int, int]:
        """
        The `(height, width)` of the `pixel_values` made from a `height x width` input, without processing it.

        Arguments left as `None` take the processor's own values; other keyword arguments are ignored.
        """
        image_aspect_ratio = image_aspect_ratio or self.image_aspect_ratio
        do_resize = self.do_resize if do_resize is None else do_resize
        do_center_crop = self.do_center_crop if do_center_crop is None else do_center_crop
        sizes = self._standardize_kwargs(
            size=size or self.size, crop_size=crop_size or self.crop_size, default_to_square=self.default_to_square
        )
        if image_aspect_ratio == "pad":
            height = width = max(height, width)
        if do_resize:
            height, width = self._resized_shape(height, width, sizes["size"])
        if do_center_crop:
            height, width = sizes["crop_size"].height, sizes["crop_size"].width
        return int(height), int(width)

    def _pad_and_resize(self, image: np.ndarray, fill_color: tuple[int, ...], size, resample) -> np.ndarray:
        """
        `expand_to_square` then the backend's PIL resize, in one PIL pass: the same pixels, without converting a
        possibly huge mostly-constant canvas between numpy and PIL (10000 x 200 takes ~1 s instead of ~4 s).
        """
        _, height, width = image.shape
        side = max(height, width)
        canvas = PIL.Image.new("RGB", (side, side), fill_color)
        canvas.paste(PIL.Image.fromarray(image.transpose(1, 2, 0)), ((side - width) // 2, (side - height) // 2))
        out_height, out_width = self._resized_shape(side, side, size)
        resample = PILImageResampling.BILINEAR if resample is None else resample
        resized = canvas.resize((out_width, out_height), resample=resample, reducing_gap=None)
        return np.asarray(resized).transpose(2, 0, 1)

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool = True,
        size=None,
        resample=None,
        image_mean=None,
        image_aspect_ratio: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        image_aspect_ratio = image_aspect_ratio or self.image_aspect_ratio
        self._check_aspect_ratio(image_aspect_ratio)
        for image in images:
            self._check_working_size(image.shape[1], image.shape[2], image_aspect_ratio, size if do_resize else None)
        if image_aspect_ratio == "pad":
            fill_color = mean_fill_color(image_mean)
            if do_resize:
                images = [self._pad_and_resize(image, fill_color, size, resample) for image in images]
                do_resize = False
            else:
                images = [expand_to_square(image, fill_color) for image in images]
        return super()._preprocess(
            images, do_resize=do_resize, size=size, resample=resample, image_mean=image_mean, **kwargs
        )


__all__ = ["CrocImageProcessor", "CrocImageProcessorKwargs"]
