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
"""X-Former stage 1: config, losses, gradients, freezing, masks, save/load and half precision."""

import json

import pytest
import torch
from test_xformer_helpers import (  # noqa: F401  (single_thread: pytestmark)
    DEC_TOKEN_ID,
    single_thread,
    tiny_batch,
    tiny_config,
    tiny_qformer_config,
)

from modeling_croc import XFormerConfig, XFormerModel
from modeling_croc.modeling_xformer import identity_noise, itg_attention_mask, mae_mask_ratio


NO_DROPOUT = dict(qformer_config=tiny_qformer_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
FROZEN_PREFIXES = ("vision_model.", "mae_encoder.", "mae_decoder.")
pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return XFormerModel(tiny_config(with_text=False, **{**NO_DROPOUT, **overrides}))


# -- config ------------------------------------------------------------------------------------------------------------


def test_config_defaults_follow_the_spec():
    config = XFormerConfig()
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers) == (1408, 39)
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (224, 14)
    assert (config.mae_config.hidden_size, config.mae_config.patch_size, config.mae_num_patches) == (1280, 14, 256)
    assert config.qformer_config.vocab_size == 30523 and config.qformer_config.cross_attention_frequency == 2
    assert config.qformer_config.encoder_hidden_size == 1408
    assert (config.num_query_tokens, config.mae_mask_ratio, config.reconstruction_loss_weight) == (32, 0.5, 1.0)
    assert config.mae_mask_ratio_train == 0.5 and config.reconstruction_weight == 1.0  # spec aliases
    assert config.text_config is None
    assert XFormerConfig(text_config={}).text_config.model_type == "opt"


def test_config_dict_round_trip_and_cross_attention_width(tmp_path):
    config = tiny_config(vision_config={"hidden_size": 40, "num_attention_heads": 2, "image_size": 56})
    assert config.qformer_config.encoder_hidden_size == 40
    config.save_pretrained(tmp_path)
    reloaded = XFormerConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "xformer"


def test_config_rejects_bad_switches():
    with pytest.raises(ValueError, match="mae_mask_ratio"):
        tiny_config(mae_mask_ratio=1.0)
    with pytest.raises(ValueError, match="dual_mae_num_heads"):
        tiny_config(dual_mae_num_heads=5)


# -- forward and losses ------------------------------------------------------------------------------------------------


def test_forward_shapes_and_finite_losses():
    model = tiny_model().train()
    out = model(**tiny_batch(batch_size=4), return_loss=True)
    for name in ("loss", "itc_loss", "itm_loss", "itg_loss", "reconstruction_loss"):
        assert torch.isfinite(getattr(out, name)), name
    total = out.itc_loss + out.itm_loss + out.itg_loss + out.reconstruction_loss
    torch.testing.assert_close(out.loss, total)
    assert out.query_output.shape == (4, 4, 32)  # Z': batch, num_query_tokens, qformer hidden
    assert out.image_embeds.shape == (4, 4, 16) and out.text_embeds.shape == (4, 16)
    assert out.itm_logits.shape == (12, 2) and out.itg_logits.shape == (4, 7, 100)
    assert out.reconstruction_logits.shape == (4, 16, 14 * 14 * 3)
    # stage-1 training masks half of the 16 MAE patches: M' = CLS + 8 visible tokens
    assert out.mae_mask.sum(dim=1).tolist() == [8.0] * 4 and out.fused_mae_tokens.shape == (4, 9, 48)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(4, 4))


def test_every_loss_decreases_over_a_few_steps():
    # A wider init than BERT's 0.02 so that a random tiny Q-Former separates images and texts at step 0.
    wide = tiny_qformer_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2)
    model = tiny_model(seed=1, initializer_range=0.2, qformer_config=wide).train()
    batch = tiny_batch(batch_size=4, seed=1)
    noise = torch.rand(4, 16, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    history = []
    for _ in range(5):
        torch.manual_seed(0)  # same hard-negative draws every step
        out = model(**batch, noise=noise)
        history.append({k: out[k].item() for k in ("itc_loss", "itm_loss", "itg_loss", "reconstruction_loss")})
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    for name in history[0]:
        assert history[-1][name] < history[0][name], (name, [h[name] for h in history])


def test_frozen_parts_get_no_gradient_and_trainable_parts_do():
    model = tiny_model().train()
    model(**tiny_batch()).loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith(FROZEN_PREFIXES):
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.requires_grad and parameter.grad is not None, name
    assert model.query_tokens.grad.abs().sum() > 0
    step2_query = model.dual_cross_attention.layers[0].queries_from_mae.crossattention.attention.query
    assert step2_query.weight.grad.abs().sum() > 0


def test_reconstruction_gradient_flows_through_the_frozen_decoder_into_the_dual_block():
    model = tiny_model().train()
    batch = tiny_batch()
    out = model(pixel_values=batch["pixel_values"], mae_pixel_values=batch["mae_pixel_values"])
    assert out.itc_loss is None and out.itm_loss is None and out.itg_loss is None
    assert torch.equal(out.loss, out.reconstruction_loss)
    out.reconstruction_loss.backward()
    step1 = model.dual_cross_attention.layers[0].mae_from_queries
    assert step1.crossattention.attention.query.weight.grad.abs().sum() > 0  # M attends to Z_q ...
    assert step1.crossattention.attention.key.weight.grad.abs().sum() > 0  # ... so Z_q's keys learn from L_rec
    assert model.qformer.encoder.layer[0].crossattention.attention.query.weight.grad.abs().sum() > 0
    # M' is the output of step 1: with one dual layer, step 2 (queries <- M') cannot influence L_rec.
    step2 = model.dual_cross_attention.layers[0].queries_from_mae
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in step2.parameters())
    assert all(p.grad is None for p in model.mae_decoder.parameters())


def test_reconstruction_weight_scales_its_term():
    batch = tiny_batch()
    noise = torch.rand(4, 16, generator=torch.Generator().manual_seed(0))
    losses = []
    for weight in (1.0, 3.0):
        model = tiny_model(reconstruction_loss_weight=weight).train()
        torch.manual_seed(0)
        out = model(**batch, noise=noise)
        losses.append((out.loss - out.itc_loss - out.itm_loss - out.itg_loss, out.reconstruction_loss))
    torch.testing.assert_close(losses[0][0], losses[0][1])
    torch.testing.assert_close(losses[1][0], 3.0 * losses[1][1])


def test_eval_uses_identity_order_and_no_masking():
    model = tiny_model().eval()
    batch = tiny_batch()
    out = model(pixel_values=batch["pixel_values"], mae_pixel_values=batch["mae_pixel_values"], return_loss=False)
    assert out.mae_mask.sum() == 0 and out.fused_mae_tokens.shape == (4, 17, 48)
    # identity order: the MAE tokens equal a raw ViTMAE pass with monotonic noise, patch i at position 1 + i
    with torch.no_grad(), mae_mask_ratio(model.mae_encoder, 0.0):
        reference = model.mae_encoder(batch["mae_pixel_values"], noise=identity_noise(4, 16, "cpu"))
    assert torch.equal(reference.ids_restore, torch.arange(16).expand(4, -1))
    mae = model.encode_mae(batch["mae_pixel_values"])
    torch.testing.assert_close(mae.tokens, reference.last_hidden_state)
    assert model.mae_encoder.config.mask_ratio == model.config.mae_config.mask_ratio  # the switch is restored


def test_dual_block_switches_change_what_they_should():
    batch = tiny_batch()
    plain = tiny_model(itc_use_fused=False).eval()
    out = plain(**batch, return_loss=False)
    expected = torch.nn.functional.normalize(plain.vision_projection(out.qformer_query_output), dim=-1)
    torch.testing.assert_close(out.image_embeds, expected)
    no_cls = tiny_model(dual_include_mae_cls=False).eval()
    out = no_cls(**batch, return_loss=False)
    mae = no_cls.encode_mae(batch["mae_pixel_values"])
    assert torch.equal(out.fused_mae_tokens[:, 0], mae.tokens[:, 0])  # CLS bypasses the dual block
    deep = tiny_model(dual_num_layers=2, dual_use_ffn=False)
    assert len(deep.dual_cross_attention.layers) == 2
    assert not hasattr(deep.dual_cross_attention.layers[0].mae_from_queries, "intermediate")
    assert torch.isfinite(deep.train()(**batch).loss)


def test_itg_fused_and_mae_feature_layer_switches():
    batch = tiny_batch()
    fused = tiny_model(itg_use_fused=True).train()
    plain = tiny_model(itg_use_fused=False).train()
    torch.manual_seed(0)
    fused_out = fused(**batch)
    torch.manual_seed(0)
    plain_out = plain(**batch)
    torch.testing.assert_close(fused_out.itc_loss, plain_out.itc_loss)  # same weights, only ITG's prefix differs
    assert not torch.allclose(fused_out.itg_logits, plain_out.itg_logits)
    early = tiny_model(mae_feature_layer=0).eval()
    last = tiny_model(mae_feature_layer=-1).eval()
    early_tokens = early.encode_mae(batch["mae_pixel_values"]).tokens
    last_tokens = last.encode_mae(batch["mae_pixel_values"]).tokens
    assert early_tokens.shape == last_tokens.shape and not torch.allclose(early_tokens, last_tokens)
    with torch.no_grad(), mae_mask_ratio(early.mae_encoder, 0.0):
        embeddings, _, _ = early.mae_encoder.embeddings(batch["mae_pixel_values"], noise=identity_noise(4, 16, "cpu"))
    torch.testing.assert_close(early_tokens, embeddings)  # layer 0 = the embedding output (before any block)


def test_activation_checkpointing_keeps_the_gradients():
    batch = tiny_batch()
    noise = torch.rand(4, 16, generator=torch.Generator().manual_seed(0))
    gradients = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        torch.manual_seed(0)
        model(**batch, noise=noise).loss.backward()
        gradients.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys()
    for name in gradients[0]:
        torch.testing.assert_close(gradients[1][name], gradients[0][name], atol=1e-6, rtol=1e-5)


def test_itg_mask_is_multimodal_causal():
    text_mask = torch.tensor([[1, 1, 1, 0]])
    allowed = itg_attention_mask(text_mask, num_queries=2, dtype=torch.float32)[0, 0] == 0
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],  # queries see queries only
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],  # text sees all queries and earlier text
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 0],  # padded key never visible
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed, expected)


def test_itg_logits_do_not_see_future_text():
    model = tiny_model().eval()
    batch = tiny_batch(batch_size=2)
    visual = model.get_visual_features(batch["pixel_values"], batch["mae_pixel_values"])
    ids, mask = batch["input_ids"], torch.ones_like(batch["input_ids"])
    _, logits = model.itg_loss(visual, ids, mask)
    changed = ids.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 90 + 5
    _, logits_changed = model.itg_loss(visual, changed, mask)
    torch.testing.assert_close(logits[:, :4], logits_changed[:, :4])  # positions before the change are untouched
    assert not torch.allclose(logits[:, 4:], logits_changed[:, 4:])
    assert model.config.itg_bos_token_id == DEC_TOKEN_ID


def test_batch_of_one_skips_itm():
    model = tiny_model().train()
    out = model(**tiny_batch(batch_size=1))
    assert out.itm_loss is None and torch.isfinite(out.loss)


# -- save / load -------------------------------------------------------------------------------------------------------


def test_save_load_round_trip_is_bit_exact_and_keeps_the_freeze(tmp_path):
    from transformers import AutoModel

    model = tiny_model().eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_xformer.XFormerModel"
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is XFormerModel
    original, loaded = model.state_dict(), reloaded.state_dict()
    assert original.keys() == loaded.keys()
    assert all(torch.equal(original[key], loaded[key]) for key in original)
    assert reloaded.lm_head.decoder.weight is reloaded.embeddings.word_embeddings.weight  # tied ITG decoder
    for name, parameter in reloaded.named_parameters():
        assert parameter.requires_grad == (not name.startswith(FROZEN_PREFIXES)), name
    batch = tiny_batch()
    out, out_loaded = model(**batch, return_loss=False), reloaded(**batch, return_loss=False)
    assert torch.equal(out.query_output, out_loaded.query_output)
    assert torch.equal(out.logits_per_image, out_loaded.logits_per_image)


def test_qformer_stays_fp32_under_fp16(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    model = XFormerModel.from_pretrained(tmp_path, dtype=torch.float16).eval()
    assert model.vision_model.embeddings.patch_embedding.weight.dtype == torch.float16
    assert model.mae_encoder.layernorm.weight.dtype == torch.float16
    for part in (model.qformer, model.dual_cross_attention, model.embeddings, model.itm_head):
        assert all(p.dtype == torch.float32 for p in part.parameters())
    assert model.query_tokens.dtype == torch.float32
    batch = {k: v.half() if v.is_floating_point() else v for k, v in tiny_batch().items()}
    out = model(**batch)
    assert out.query_output.dtype == torch.float32 and torch.isfinite(out.loss)


def test_bfloat16_losses_are_finite(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    model = XFormerModel.from_pretrained(tmp_path, dtype=torch.bfloat16).train()
    batch = {k: v.bfloat16() if v.is_floating_point() else v for k, v in tiny_batch().items()}
    out = model(**batch)
    for name in ("loss", "itc_loss", "itm_loss", "itg_loss", "reconstruction_loss"):
        assert torch.isfinite(getattr(out, name)), name
    out.loss.backward()
    assert all(torch.isfinite(p.grad.float()).all() for p in model.parameters() if p.grad is not None)


def test_contrastive_negatives_are_gathered_across_processes(monkeypatch):
    """Rank 1 of a simulated 2-process run sees the same ITC logits as one process holding both halves."""
    import torch.distributed as dist

    model = tiny_model().train()
    full = tiny_batch(batch_size=4)
    noise = torch.rand(4, 16, generator=torch.Generator().manual_seed(0))
    halves = [{key: value[part * 2 : part * 2 + 2] for key, value in full.items()} for part in (0, 1)]
    with torch.no_grad():
        single = model(**full, noise=noise)

    rank, recorded, calls = {"value": 0}, [], {"count": 0}

    def fake_all_gather(output, tensor):
        if rank["value"] == 0:  # rank 0's pass: remember what it contributes
            recorded.append(tensor.clone())
            output[0].copy_(tensor)
            output[1].copy_(tensor)  # stand-in for rank 1 (rank 0's outputs are not checked)
        else:  # rank 1's pass: receive rank 0's tensors in the same call order
            output[0].copy_(recorded[calls["count"]])
            calls["count"] += 1
            output[1].copy_(tensor)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: rank["value"])
    monkeypatch.setattr(dist, "all_gather", fake_all_gather)
    with torch.no_grad():
        model(**halves[0], noise=noise[:2])
        rank["value"] = 1
        torch.manual_seed(0)
        distributed = model(**halves[1], noise=noise[2:])
    assert distributed.logits_per_image.shape == (2, 4)
    torch.testing.assert_close(distributed.logits_per_image, single.logits_per_image[2:])
    torch.testing.assert_close(distributed.logits_per_text, single.logits_per_text[2:])
    targets = torch.tensor([2, 3])  # rank 1's positives sit after rank 0's rows
    expected = (
        torch.nn.functional.cross_entropy(single.logits_per_image[2:], targets, label_smoothing=0.1)
        + torch.nn.functional.cross_entropy(single.logits_per_text[2:], targets, label_smoothing=0.1)
    ) / 2
    torch.testing.assert_close(distributed.itc_loss, expected)
    assert distributed.itm_logits.shape == (6, 2)


def test_default_sizes_match_the_parameter_budget():
    """Spec check (c): BLIP-2's 108 M trainable (ViT-g + OPT-6.7B) plus ~21 M for the dual block."""
    from modeling_croc import XFormerForConditionalGeneration

    opt_6_7b_width = dict(model_type="opt", hidden_size=4096, word_embed_proj_dim=4096, ffn_dim=16384,
                          num_attention_heads=32, num_hidden_layers=1)  # the frozen depth does not matter here
    with torch.device("meta"):
        model = XFormerForConditionalGeneration(XFormerConfig(text_config=opt_6_7b_width))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dual = sum(p.numel() for p in model.dual_cross_attention.parameters())
    assert 20.5e6 < dual < 21.5e6  # spec table: ~20.9 M
    assert 107.5e6 < trainable - dual < 109e6  # BLIP-2 stage 2 (OPT-6.7B): 108 M
    assert model.dual_cross_attention.layers[0].mae_from_queries.crossattention.attention.query.in_features == 1280
