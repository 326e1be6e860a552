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
"""Tiny X-Former configs and batches shared by the X-Former tests (no tests here)."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from modeling_croc.configuration_xformer import XFormerConfig  # noqa: E402



@pytest.fixture(autouse=False)
def single_thread():
    """Tiny models run fastest on one thread, above all on a loaded 2-core machine; restores the setting after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


IMAGE_SIZE = 56
PATCH_SIZE = 14
QFORMER_VOCAB = 100  # 99 word pieces + [DEC]
DEC_TOKEN_ID = 99
LLM_VOCAB = 99


def tiny_vision_config(**overrides):
    config = dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
        initializer_range=0.02,  # Blip2VisionConfig's 1e-10 makes a random tower map every image to the same tokens
    )
    config.update(overrides)
    return config


def tiny_mae_config(**overrides):
    config = dict(
        model_type="vit_mae", hidden_size=48, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, decoder_hidden_size=16, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=37, mask_ratio=0.5, norm_pix_loss=False,
    )
    config.update(overrides)
    return config


def tiny_qformer_config(**overrides):
    config = dict(
        vocab_size=QFORMER_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, use_qformer_text_input=True, cross_attention_frequency=2,
    )
    config.update(overrides)
    return config


def tiny_text_config(**overrides):
    config = dict(
        model_type="opt", vocab_size=LLM_VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=37,
        num_attention_heads=2, max_position_embeddings=128, word_embed_proj_dim=32, pad_token_id=1,
        bos_token_id=2, eos_token_id=2,
    )
    config.update(overrides)
    return config


def tiny_config(with_text: bool = True, **overrides) -> XFormerConfig:
    kwargs = dict(
        vision_config=tiny_vision_config(),
        mae_config=tiny_mae_config(),
        qformer_config=tiny_qformer_config(),
        text_config=tiny_text_config() if with_text else None,
        num_query_tokens=4,
        image_text_hidden_size=16,
        dual_mae_num_heads=2,
        dual_intermediate_size=37,
        itg_bos_token_id=DEC_TOKEN_ID,
    )
    kwargs.update(overrides)
    return XFormerConfig(**kwargs)


def tiny_batch(batch_size: int = 4, text_length: int = 7, vocab: int = QFORMER_VOCAB - 1, seed: int = 0):
    """Random images (both normalisations of one crop) and right-padded texts starting with [CLS] = 3."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    mae_pixel_values = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    input_ids = torch.randint(5, vocab, (batch_size, text_length), generator=generator)
    input_ids[:, 0] = 3
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -2:] = 0
    input_ids[0, -2:] = 0
    return {
        "pixel_values": pixel_values,
        "mae_pixel_values": mae_pixel_values,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
    }
