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
"""XFormerProcessor: one crop, CLIP and ImageNet normalisations, tokenizers, save/load."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_xformer_helpers import tiny_config
from transformers import AutoProcessor, BertTokenizer, BlipImageProcessorPil
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from modeling_croc import XFormerProcessor
from modeling_croc.modeling_xformer import clip_to_mae_pixels
from modeling_croc.processing_xformer import add_dec_token, build_clip_image_processor


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "dog", "red", "blue"]


@pytest.fixture
def processor():
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(WORDS)})
    add_dec_token(tokenizer)
    return XFormerProcessor(build_clip_image_processor(56), tokenizer)


def images():
    rng = np.random.RandomState(0)
    return [Image.fromarray(rng.randint(0, 256, (70, 90, 3), dtype=np.uint8)) for _ in range(2)]


def reference(mean, std):
    return BlipImageProcessorPil(size={"height": 56, "width": 56}, image_mean=list(mean), image_std=list(std))


def test_one_crop_two_normalisations(processor):
    out = processor(images=images())
    clip = reference(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)(images(), return_tensors="pt")["pixel_values"]
    mae = reference(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)(images(), return_tensors="pt")["pixel_values"]
    assert out["pixel_values"].shape == out["mae_pixel_values"].shape == (2, 3, 56, 56)
    torch.testing.assert_close(out["pixel_values"], clip)
    torch.testing.assert_close(out["mae_pixel_values"], mae, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out["pixel_values"], out["mae_pixel_values"], atol=1e-2)
    # the model's fallback when `mae_pixel_values` is not given is the same re-normalisation
    torch.testing.assert_close(clip_to_mae_pixels(out["pixel_values"]), out["mae_pixel_values"], atol=1e-5, rtol=1e-5)


def test_text_uses_the_bert_tokenizer_with_dec(processor):
    out = processor(text=["a cat", "a red dog photo"], padding=True)
    assert out["input_ids"].tolist() == [[2, 5, 8, 3, 0, 0], [2, 5, 10, 9, 6, 3]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert "token_type_ids" not in out
    assert processor.tokenizer.bos_token == "[DEC]" and processor.tokenizer.convert_tokens_to_ids("[DEC]") == 12
    with pytest.raises(ValueError):
        processor()


def test_save_load_and_auto_processor(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    tiny_config(with_text=False).save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is XFormerProcessor
    assert reloaded.mae_image_mean == list(IMAGENET_DEFAULT_MEAN) and reloaded.tokenizer.bos_token == "[DEC]"
    first, second = processor(images=images(), text="a cat"), reloaded(images=images(), text="a cat")
    assert all(torch.equal(first[key], second[key]) for key in first)
