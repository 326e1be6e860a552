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
"""X-Former stage 2: freezing, LM loss, reconstruction switch, generation (greedy, beam, cache) and save/load."""

import pytest
import torch
from test_xformer_helpers import single_thread, tiny_batch, tiny_config  # noqa: F401  (single_thread: pytestmark)

from modeling_croc import XFormerForConditionalGeneration


pytestmark = pytest.mark.usefixtures("single_thread")
TRAINABLE_PREFIXES = ("query_tokens", "qformer.", "dual_cross_attention.", "language_projection.")


def tiny_stage2(seed=0, **overrides):
    torch.manual_seed(seed)
    return XFormerForConditionalGeneration(tiny_config(**overrides))


def text_batch(batch_size=2, length=6, seed=0):
    return torch.randint(3, 90, (batch_size, length), generator=torch.Generator().manual_seed(seed))


def test_stage2_trains_only_the_bridge_and_the_lm_loss_decreases():
    model = tiny_stage2().train()
    assert not hasattr(model, "mae_decoder")  # reconstruction is off in stage 2 by default
    images = tiny_batch(batch_size=2)
    ids = text_batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(4):
        out = model(pixel_values=images["pixel_values"], mae_pixel_values=images["mae_pixel_values"],
                    input_ids=ids, labels=ids)
        assert out.reconstruction_loss is None and out.logits.shape == (2, 4 + 6, 99)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]
    for name, parameter in model.named_parameters():
        trainable = name.startswith(TRAINABLE_PREFIXES)
        assert parameter.requires_grad == trainable, name
        assert (parameter.grad is not None) == trainable, name
    # stage 2 keeps every MAE patch (mask ratio 0, identity order) even in training
    assert model.get_visual_features(images["pixel_values"], images["mae_pixel_values"]).mae.mask.sum() == 0


def test_lm_loss_is_on_the_text_only_and_honours_num_items_in_batch():
    model = tiny_stage2().eval()
    images = tiny_batch(batch_size=2)
    ids = text_batch()
    labels = ids.clone()
    labels[0, -2:] = -100
    with torch.no_grad():
        out = model(pixel_values=images["pixel_values"], input_ids=ids, labels=labels)
        summed = model(pixel_values=images["pixel_values"], input_ids=ids, labels=labels,
                       num_items_in_batch=torch.tensor(1)).loss
    text_logits = out.logits[:, 4:]  # the 4 visual tokens come first and are never targets
    expected = torch.nn.functional.cross_entropy(text_logits[:, :-1].reshape(-1, 99), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(summed, expected * (labels[:, 1:] != -100).sum())


def test_reconstruction_in_stage2_switch():
    model = tiny_stage2(reconstruction_in_stage2=True).train()
    assert not any(p.requires_grad for p in model.mae_decoder.parameters())
    images = tiny_batch(batch_size=2)
    ids = text_batch()
    out = model(pixel_values=images["pixel_values"], mae_pixel_values=images["mae_pixel_values"],
                input_ids=ids, labels=ids)
    torch.testing.assert_close(out.loss, out.lm_loss + out.reconstruction_loss)
    assert model.get_visual_features(images["pixel_values"], images["mae_pixel_values"]).mae.mask.sum() == 2 * 8


def test_freeze_qformer_stage2_switch():
    model = tiny_stage2(freeze_qformer_stage2=True)
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"language_projection"}


def greedy_by_hand(model, pixel_values, prompt, steps, eos):
    """Greedy decoding through the model's own forward, no cache: the reference for `generate`."""
    ids = prompt
    for _ in range(steps):
        with torch.no_grad():
            logits = model(pixel_values=pixel_values, input_ids=ids).logits
        next_id = logits[:, -1].argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
        if (next_id == eos).all():
            break
    return ids


def test_greedy_generate_matches_a_forward_loop_and_cache_changes_nothing():
    model = tiny_stage2(seed=3).eval()
    images = tiny_batch(batch_size=1)
    prompt = text_batch(batch_size=1, length=3)
    eos = model.config.text_config.eos_token_id
    expected = greedy_by_hand(model, images["pixel_values"], prompt, steps=6, eos=eos)
    cached = model.generate(images["pixel_values"], input_ids=prompt, max_new_tokens=6, do_sample=False)
    uncached = model.generate(images["pixel_values"], input_ids=prompt, max_new_tokens=6, do_sample=False,
                              use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, : expected.shape[1]], expected)
    assert torch.equal(cached[:, :3], prompt)


def test_beam_search_with_and_without_cache():
    model = tiny_stage2(seed=4).eval()
    images = tiny_batch(batch_size=2)
    kwargs = dict(max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False)
    cached = model.generate(images["pixel_values"], mae_pixel_values=images["mae_pixel_values"], **kwargs)
    uncached = model.generate(images["pixel_values"], mae_pixel_values=images["mae_pixel_values"], use_cache=False,
                              **kwargs)
    assert torch.equal(cached, uncached)
    assert cached.shape[0] == 4 and (cached[:, 0] == model.config.text_config.bos_token_id).all()
    assert ((cached >= 0) & (cached < 99)).all()


def test_left_padded_batch_generates_like_single_prompts():
    model = tiny_stage2(seed=5).eval()
    images = tiny_batch(batch_size=2)
    short, long = text_batch(1, 2, seed=1), text_batch(1, 4, seed=2)
    pad = model.config.text_config.pad_token_id
    batch_ids = torch.cat([torch.cat([torch.full((1, 2), pad), short], dim=1), long])
    batch_mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    batched = model.generate(images["pixel_values"], input_ids=batch_ids, attention_mask=batch_mask,
                             max_new_tokens=4, do_sample=False, eos_token_id=None)
    single = model.generate(images["pixel_values"][:1], input_ids=short, max_new_tokens=4, do_sample=False,
                            eos_token_id=None)
    assert torch.equal(batched[0, 2:], single[0])


def test_image_token_placeholders_equal_the_prefix_layout():
    model = tiny_stage2(image_token_index=98).eval()
    images = tiny_batch(batch_size=2)
    ids = text_batch()
    with torch.no_grad():
        prefix = model(pixel_values=images["pixel_values"], input_ids=ids).logits
        placeholders = model(pixel_values=images["pixel_values"],
                             input_ids=torch.cat([torch.full((2, 4), 98), ids], dim=1)).logits
        torch.testing.assert_close(prefix, placeholders)
        with pytest.raises(ValueError, match="do not match"):
            model(pixel_values=images["pixel_values"], input_ids=torch.cat([torch.full((2, 3), 98), ids], dim=1))


def test_stage2_save_load_round_trip(tmp_path):
    from transformers import AutoModelForImageTextToText

    model = tiny_stage2().eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(reloaded) is XFormerForConditionalGeneration
    original, loaded = model.state_dict(), reloaded.state_dict()
    assert original.keys() == loaded.keys() and all(torch.equal(original[k], loaded[k]) for k in original)
    assert not any(p.requires_grad for p in reloaded.language_model.parameters())
    images = tiny_batch(batch_size=1)
    assert torch.equal(model.generate(images["pixel_values"], max_new_tokens=3),
                       reloaded.generate(images["pixel_values"], max_new_tokens=3))


def test_stage2_starts_from_a_stage1_checkpoint(tmp_path):
    from modeling_croc import XFormerModel

    torch.manual_seed(0)
    stage1 = XFormerModel(tiny_config()).eval()  # a stage-1 config that already names the LLM
    stage1.save_pretrained(tmp_path)
    stage2 = XFormerForConditionalGeneration.from_pretrained(tmp_path).eval()
    images = tiny_batch(batch_size=2)
    with torch.no_grad():
        expected = stage1(pixel_values=images["pixel_values"], mae_pixel_values=images["mae_pixel_values"],
                          return_loss=False).query_output
        ours = stage2(pixel_values=images["pixel_values"], mae_pixel_values=images["mae_pixel_values"],
                      input_ids=text_batch()).query_output
    torch.testing.assert_close(ours, expected)
