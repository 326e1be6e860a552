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
"""X-Former processor: one crop, two normalisations (CLIP and MAE/ImageNet), plus a BERT or LLM tokenizer."""

import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.processing_utils import ProcessorMixin
from transformers.utils import is_torchvision_available


DEC_TOKEN = "[DEC]"


def build_clip_image_processor(image_size: int = 224):
    """BLIP-2's image processor: resize to `image_size`, rescale to [0, 1], OpenAI-CLIP mean / std."""
    if is_torchvision_available():
        from transformers import BlipImageProcessor as image_processor_class
    else:
        from transformers import BlipImageProcessorPil as image_processor_class
    return image_processor_class(
        size={"height": image_size, "width": image_size},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,
    )


def add_dec_token(tokenizer) -> int:
    """Add BLIP-2's `[DEC]` ITG start token as the BERT tokenizer's BOS (id 30522 for bert-base-uncased)."""
    if DEC_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
    else:
        tokenizer.bos_token = DEC_TOKEN
    return tokenizer.convert_tokens_to_ids(DEC_TOKEN)


def renormalize(pixel_values: torch.Tensor, from_mean, from_std, to_mean, to_std) -> torch.Tensor:
    """Exchange the per-channel normalisation of (B, 3, H, W) pixels: same crop, other statistics."""
    shape = (1, -1, 1, 1)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float32).view(shape)  # noqa: E731
    unit_pixels = pixel_values.float() * as_tensor(from_std) + as_tensor(from_mean)
    return (unit_pixels - as_tensor(to_mean)) / as_tensor(to_std)


class XFormerProcessor(ProcessorMixin):
    r"""
    Images -> `pixel_values` (CLIP statistics, for the CLIP tower) and `mae_pixel_values` (ImageNet statistics, for
    MAE) of the *same* resized crop; text -> `input_ids` / `attention_mask` with a BERT tokenizer (stage 1, with
    `[DEC]` added, see [`add_dec_token`]) or the LLM's tokenizer (stage 2; right padding to train, left to generate).

    Augment (random-resized crop, flip) before calling the processor so both tensors share the crop.

    Args:
        image_processor: a BLIP image processor with CLIP mean / std ([`build_clip_image_processor`]).
        tokenizer: the BERT or LLM tokenizer.
        mae_image_mean (`list[float]`, defaults to ImageNet mean): MAE's normalisation mean.
        mae_image_std (`list[float]`, defaults to ImageNet std): MAE's normalisation std.
    """

    def __init__(self, image_processor=None, tokenizer=None, mae_image_mean=None, mae_image_std=None, **kwargs):
        self.mae_image_mean = list(mae_image_mean) if mae_image_mean is not None else list(IMAGENET_DEFAULT_MEAN)
        self.mae_image_std = list(mae_image_std) if mae_image_std is not None else list(IMAGENET_DEFAULT_STD)
        super().__init__(image_processor, tokenizer, **kwargs)

    def mae_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The MAE tensor of the crop `pixel_values` was made from (B, 3, H, W)."""
        return renormalize(
            pixel_values,
            self.image_processor.image_mean,
            self.image_processor.image_std,
            self.mae_image_mean,
            self.mae_image_std,
        )

    def __call__(self, images=None, text=None, return_tensors="pt", **kwargs) -> BatchFeature:
        """
        Args:
            images: one or a list of PIL images / arrays.
            text: a string or a list of strings.
            return_tensors: only `"pt"` is supported (the two normalisations are computed in torch).
            kwargs: passed to the tokenizer (`padding`, `truncation`, `max_length`, ...).
        """
        if images is None and text is None:
            raise ValueError("XFormerProcessor needs `images`, `text` or both.")
        if return_tensors != "pt":
            raise ValueError("XFormerProcessor only returns PyTorch tensors (`return_tensors='pt'`).")
        data = {}
        if text is not None:
            data.update(self.tokenizer(text, return_tensors="pt", **kwargs))
            data.pop("token_type_ids", None)
        if images is not None:
            pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]
            data["pixel_values"] = pixel_values
            data["mae_pixel_values"] = self.mae_pixels(pixel_values)
        return BatchFeature(data)

    @property
    def model_input_names(self):
        return ["pixel_values", "mae_pixel_values", "input_ids", "attention_mask"]


__all__ = ["XFormerProcessor", "build_clip_image_processor", "add_dec_token"]
