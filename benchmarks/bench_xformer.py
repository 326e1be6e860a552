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
"""X-Former stage-1 training step vs transformers' BLIP-2 (same Q-Former, no MAE branch), interleaved, median ratio.

Both sides run one optimiser step of BLIP-2's three losses (ITC, ITM with hard negatives, ITG); X-Former adds the
frozen MAE encoder, the dual cross-attention block, the frozen-but-differentiable MAE decoder and L_rec. The
baseline is assembled from `Blip2ForImageTextRetrieval`'s own modules (vision tower, queries, text embeddings,
Q-Former, projections, ITM head) plus a linear ITG head, as transformers ships no BLIP-2 ITG head.

Sizes are the real ones (EVA ViT-g / MAE ViT-H / BERT-base) scaled down ~8x in width and depth, at 112 px
(64 patches), batch 8, 16 text tokens, so the whole run stays well under a minute on 2 CPU cores.
"""

import os
import statistics
import sys
import time

import torch
from torch.nn import functional as F


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from transformers import Blip2Config, Blip2ForImageTextRetrieval  # noqa: E402

from modeling_croc.configuration_xformer import XFormerConfig  # noqa: E402
from modeling_croc.modeling_xformer import XFormerModel, itg_attention_mask, sample_hard_negatives  # noqa: E402


TARGET = 1.5


def sizes(quick: bool) -> dict:
    """Real widths / 8 (1408 -> 176, 1280 -> 160, 768 -> 96, 512 -> 64); depths keep MAE-H / ViT-g ~ 0.8."""
    return dict(
        image_size=56 if quick else 112,
        batch_size=4 if quick else 8,
        text_length=16,
        vision=dict(hidden_size=176, intermediate_size=768, num_hidden_layers=3 if quick else 5, num_attention_heads=4,
                    patch_size=14, initializer_range=0.02),
        mae=dict(model_type="vit_mae", hidden_size=160, intermediate_size=640, num_hidden_layers=2 if quick else 4,
                 num_attention_heads=4, patch_size=14, decoder_hidden_size=64, decoder_num_hidden_layers=1,
                 decoder_num_attention_heads=4, decoder_intermediate_size=256),
        qformer=dict(vocab_size=1000, hidden_size=96, num_hidden_layers=2 if quick else 4, num_attention_heads=4,
                     intermediate_size=384, max_position_embeddings=64, use_qformer_text_input=True),
        num_query_tokens=8 if quick else 32,
    )


def build_models(settings: dict):
    image_size = settings["image_size"]
    vision = {**settings["vision"], "image_size": image_size}
    mae = {**settings["mae"], "image_size": image_size}
    common = dict(num_query_tokens=settings["num_query_tokens"], image_text_hidden_size=32)
    torch.manual_seed(0)
    ours = XFormerModel(XFormerConfig(vision_config=vision, mae_config=mae, qformer_config=settings["qformer"],
                                      dual_mae_num_heads=4, dual_intermediate_size=384, itg_bos_token_id=999,
                                      **common))
    baseline = Blip2ForImageTextRetrieval(Blip2Config(vision_config=vision, qformer_config=settings["qformer"],
                                                      **common))
    baseline.vision_model.requires_grad_(False)  # frozen, as in BLIP-2 stage 1
    baseline.itg_head = torch.nn.Linear(96, settings["qformer"]["vocab_size"])
    return ours.train(), baseline.train()


def blip2_three_losses(model, pixel_values, input_ids, attention_mask) -> torch.Tensor:
    """BLIP-2 stage-1 losses from `Blip2ForImageTextRetrieval`'s parts: ITC + ITM (hard negatives) + ITG."""
    batch_size, num_queries = input_ids.shape[0], model.config.num_query_tokens
    with torch.no_grad():
        image_tokens = model.vision_model(pixel_values=pixel_values).last_hidden_state
    queries = model.query_tokens.expand(batch_size, -1, -1)
    query_output = model.qformer(query_embeds=queries, encoder_hidden_states=image_tokens).last_hidden_state
    text_output = model.qformer(query_embeds=model.embeddings(input_ids=input_ids), query_length=0,
                                attention_mask=attention_mask).last_hidden_state
    image_feats = F.normalize(model.vision_projection(query_output), dim=-1)  # B, Q, E
    text_feat = F.normalize(model.text_projection(text_output[:, 0]), dim=-1)  # B, E
    sim_i2t = torch.einsum("bqe,ne->bnq", image_feats, text_feat).amax(-1) / 0.07
    sim_t2i = torch.einsum("be,nqe->bnq", text_feat, image_feats).amax(-1) / 0.07
    targets = torch.arange(batch_size)
    itc = (
        F.cross_entropy(sim_i2t, targets, label_smoothing=0.1) + F.cross_entropy(sim_t2i, targets, label_smoothing=0.1)
    ) / 2
    negative_images, negative_texts = sample_hard_negatives(sim_t2i, targets), sample_hard_negatives(sim_i2t, targets)
    itm_images = torch.cat([image_tokens, image_tokens[negative_images], image_tokens])
    itm_ids = torch.cat([input_ids, input_ids, input_ids[negative_texts]])
    itm_mask = torch.cat([attention_mask, attention_mask, attention_mask[negative_texts]])
    itm_queries = model.query_tokens.expand(3 * batch_size, -1, -1)
    query_mask = torch.ones(3 * batch_size, num_queries, dtype=itm_mask.dtype)
    joint = model.qformer(query_embeds=model.embeddings(input_ids=itm_ids, query_embeds=itm_queries),
                          query_length=num_queries, attention_mask=torch.cat([query_mask, itm_mask], 1),
                          encoder_hidden_states=itm_images).last_hidden_state
    itm_labels = torch.cat([torch.ones(batch_size), torch.zeros(2 * batch_size)]).long()
    itm = F.cross_entropy(model.itm_head(joint[:, :num_queries]).mean(1), itm_labels)
    decoder_ids = input_ids.clone()
    decoder_ids[:, 0] = 999
    joint = model.qformer(query_embeds=model.embeddings(input_ids=decoder_ids, query_embeds=queries),
                          query_length=num_queries,
                          attention_mask=itg_attention_mask(attention_mask, num_queries, torch.float32),
                          encoder_hidden_states=image_tokens).last_hidden_state
    logits = model.itg_head(joint[:, num_queries:])
    labels = decoder_ids.masked_fill(attention_mask == 0, -100)
    itg = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                          label_smoothing=0.1)
    return itc + itm + itg


def make_batch(settings: dict) -> dict:
    generator = torch.Generator().manual_seed(0)
    shape = (settings["batch_size"], 3, settings["image_size"], settings["image_size"])
    input_ids = torch.randint(5, 999, (settings["batch_size"], settings["text_length"]), generator=generator)
    input_ids[:, 0] = 101
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -4:] = 0
    return dict(pixel_values=torch.randn(shape, generator=generator),
                mae_pixel_values=torch.randn(shape, generator=generator),
                input_ids=input_ids, attention_mask=attention_mask)


def training_step(model, optimizer, loss_fn) -> float:
    """CPU seconds of one step (process clock: steadier than wall time on a shared machine)."""
    start = time.process_time()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    optimizer.step()
    return time.process_time() - start


def run(quick: bool = False) -> list[dict]:
    settings = sizes(quick)
    ours, baseline = build_models(settings)
    batch = make_batch(settings)
    ours_optimizer = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-4)
    baseline_optimizer = torch.optim.AdamW([p for p in baseline.parameters() if p.requires_grad], lr=1e-4)

    def step_ours():
        return training_step(ours, ours_optimizer, lambda: ours(**batch).loss)

    def step_baseline():
        return training_step(
            baseline, baseline_optimizer,
            lambda: blip2_three_losses(baseline, batch["pixel_values"], batch["input_ids"], batch["attention_mask"]),
        )

    repeats = 3 if quick else 9
    step_ours(), step_baseline()  # warm-up
    ours_times, baseline_times, ratios = [], [], []
    for repeat in range(repeats):
        order = (step_ours, step_baseline) if repeat % 2 == 0 else (step_baseline, step_ours)
        first, second = order[0](), order[1]()
        ours_s, baseline_s = (first, second) if order[0] is step_ours else (second, first)
        ours_times.append(ours_s)
        baseline_times.append(baseline_s)
        ratios.append(ours_s / baseline_s)
    trainable = lambda model: sum(p.numel() for p in model.parameters() if p.requires_grad)  # noqa: E731
    return [
        {
            "name": "xformer stage-1 train step vs BLIP-2 "
            f"(batch {settings['batch_size']}, {settings['image_size']} px)",
            "ours_s": statistics.median(ours_times),
            "baseline_s": statistics.median(baseline_times),
            "ratio": statistics.median(ratios),
            "target": TARGET,
            # the same figures under the names `benchmarks/run.py` tabulates
            "ours": statistics.median(ours_times),
            "baseline": statistics.median(baseline_times),
            "unit": "s",
            "device": "cpu",
            "dtype": "float32",
            "met": statistics.median(ratios) <= TARGET,
            "repeats": repeats,
            "ours_samples": ours_times,
            "baseline_samples": baseline_times,
            "trainable_params_ours": trainable(ours),
            "trainable_params_baseline": trainable(baseline),
        }
    ]


def main():
    quick = "--quick" in sys.argv
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    rows = run(quick=quick)
    print("| benchmark | ours (s) | BLIP-2 (s) | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        verdict = "ok" if row["ratio"] <= row["target"] else "over"
        print(f"| {row['name']} | {row['ours_s']:.4f} | {row['baseline_s']:.4f} | {row['ratio']:.2f}x | "
              f"<= {row['target']}x ({verdict}) |")


if __name__ == "__main__":
    main()


__all__ = ["run"]
