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
"""X-Former against independent truth: transformers' BLIP-2 (dual block bypassed) and ViTMAEForPreTraining."""

import pytest
import torch
from test_xformer_helpers import (
    single_thread,  # noqa: F401  (autouse through pytestmark)
    tiny_batch,
    tiny_config,
    tiny_mae_config,
    tiny_qformer_config,
    tiny_text_config,
    tiny_vision_config,
)
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    Blip2Model,
    ViTMAEConfig,
    ViTMAEForPreTraining,
)

from modeling_croc import XFormerForConditionalGeneration, XFormerModel


pytestmark = pytest.mark.usefixtures("single_thread")
IMAGE_TOKEN = 98


def blip2_config(**overrides):
    settings = dict(
        vision_config=tiny_vision_config(),
        qformer_config=tiny_qformer_config(),
        text_config=tiny_text_config(),
        num_query_tokens=4,
        image_text_hidden_size=16,
        image_token_index=IMAGE_TOKEN,
    )
    settings.update(overrides)
    return Blip2Config(**settings)


def load_shared_weights(target, source, unused_prefixes=()):
    """Copy every parameter `target` shares with `source` (same names by design); nothing used may be left out."""
    result = target.load_state_dict(source.state_dict(), strict=False)
    missing = [key for key in result.missing_keys if not key.startswith(unused_prefixes)]
    assert missing == [], missing
    return target.eval()


@pytest.fixture(scope="module")
def stage1_plain():
    torch.manual_seed(0)
    model = XFormerModel(tiny_config(with_text=False, itc_use_fused=False, itm_use_fused=False)).eval()
    return model


def test_qformer_queries_match_blip2_model(stage1_plain):
    batch = tiny_batch()
    blip2 = load_shared_weights(Blip2Model(blip2_config()), stage1_plain, unused_prefixes=("language_",))
    with torch.no_grad():
        ours = stage1_plain(pixel_values=batch["pixel_values"], mae_pixel_values=batch["mae_pixel_values"],
                            return_loss=False)
        reference = blip2.get_qformer_features(pixel_values=batch["pixel_values"])
    torch.testing.assert_close(ours.qformer_query_output, reference, atol=1e-5, rtol=1e-5)


def test_itc_and_itm_match_blip2_image_text_retrieval(stage1_plain):
    batch = tiny_batch()
    retrieval = load_shared_weights(Blip2ForImageTextRetrieval(blip2_config(image_token_index=None)), stage1_plain)
    with torch.no_grad():
        ours = stage1_plain(**batch, return_loss=False)
        itc = retrieval(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"], use_image_text_matching_head=False)
        itm = retrieval(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"], use_image_text_matching_head=True)
        clip_tokens = stage1_plain.encode_clip(batch["pixel_values"])
        mae_tokens = stage1_plain.encode_mae(batch["mae_pixel_values"]).tokens
        our_itm = stage1_plain.itm_logits(clip_tokens, mae_tokens, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(ours.image_embeds, itc.image_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.text_embeds, itc.text_embeds, atol=1e-5, rtol=1e-5)
    # BLIP-2's retrieval logits are raw max-over-queries cosines; ours are divided by the learned temperature.
    torch.testing.assert_close(ours.logits_per_image * stage1_plain.temp, itc.logits_per_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_itm, itm.logits_per_image, atol=1e-5, rtol=1e-5)


def test_stage2_logits_match_blip2_for_conditional_generation():
    torch.manual_seed(0)
    model = XFormerForConditionalGeneration(tiny_config()).eval()
    model.fuse = lambda query_states, mae_tokens: (query_states, mae_tokens)  # bypass the dual block: Z' := Z_q
    stage2_qformer = tiny_qformer_config(use_qformer_text_input=False)
    blip2 = load_shared_weights(Blip2ForConditionalGeneration(blip2_config(qformer_config=stage2_qformer)), model)
    batch = tiny_batch(batch_size=2)
    text_ids = torch.randint(3, 90, (2, 6), generator=torch.Generator().manual_seed(0))
    blip_ids = torch.cat([torch.full((2, 4), IMAGE_TOKEN), text_ids], dim=1)
    with torch.no_grad():
        ours = model(pixel_values=batch["pixel_values"], mae_pixel_values=batch["mae_pixel_values"],
                     input_ids=text_ids).logits
        reference = blip2(pixel_values=batch["pixel_values"], input_ids=blip_ids).logits
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_mae_path_with_identity_fusion_matches_vitmae_for_pretraining(norm_pix_loss):
    torch.manual_seed(0)
    mae_config = tiny_mae_config(norm_pix_loss=norm_pix_loss)
    model = XFormerModel(tiny_config(with_text=False, mae_config=mae_config)).train()
    reference = ViTMAEForPreTraining(ViTMAEConfig(**{k: v for k, v in mae_config.items() if k != "model_type"}))
    renamed = {}
    for key, value in model.state_dict().items():
        if key.startswith("mae_encoder."):
            renamed["vit." + key.removeprefix("mae_encoder.")] = value
        elif key.startswith("mae_decoder."):
            renamed["decoder." + key.removeprefix("mae_decoder.")] = value
    reference.load_state_dict(renamed, strict=True)
    reference.eval()  # no dropout either way; masking ratio 0.5 comes from its config
    pixels = tiny_batch()["mae_pixel_values"]
    noise = torch.rand(4, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mae = model.encode_mae(pixels, noise=noise)
        predicted = model.reconstruct(mae.tokens, mae.ids_restore)  # M' := M
        ours = model.reconstruction_loss(predicted, pixels, mae.mask)
        expected = reference(pixel_values=pixels, noise=noise)
    torch.testing.assert_close(mae.mask, expected.mask)
    torch.testing.assert_close(predicted, expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, expected.loss, atol=1e-6, rtol=1e-5)
