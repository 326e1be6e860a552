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
"""Zero-shot image-text retrieval with a stage-1 X-Former: ITC ranking, then ITM re-ranking of the top k (BLIP-2).

    python examples/retrieval_xformer.py --model xformer-s1 --data pairs.json --image-folder images/ --rerank-k 128

With no arguments it runs on a tiny random model and the synthetic pairs of `pretrain_xformer.py` (recall is at
chance there: the point is the pipeline). Evaluation keeps every MAE patch in raster order (mask ratio 0).
"""

import argparse

import torch
from PIL import Image
from pretrain_xformer import json_pairs, synthetic_pairs, tiny_config, tiny_word_tokenizer
from transformers import AutoProcessor

from modeling_croc import XFormerModel, XFormerProcessor
from modeling_croc.processing_xformer import build_clip_image_processor


@torch.no_grad()
def encode(model, processor, pairs, batch_size: int):
    """Per-query image embeddings (N, Q, E), text embeddings (N, E) and the processed inputs for ITM."""
    image_embeds, text_embeds, pixels, mae_pixels, ids, masks = [], [], [], [], [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        images = [Image.open(image).convert("RGB") if isinstance(image, str) else image for image, _ in chunk]
        inputs = processor(images=images, text=[caption for _, caption in chunk], padding="max_length",
                           truncation=True, max_length=32)
        image_embeds.append(model.get_image_features(inputs["pixel_values"], inputs["mae_pixel_values"]))
        text_embeds.append(model.get_text_features(inputs["input_ids"], inputs["attention_mask"]))
        pixels.append(inputs["pixel_values"])
        mae_pixels.append(inputs["mae_pixel_values"])
        ids.append(inputs["input_ids"])
        masks.append(inputs["attention_mask"])
    cat = lambda parts: torch.cat(parts)  # noqa: E731
    return cat(image_embeds), cat(text_embeds), cat(pixels), cat(mae_pixels), cat(ids), cat(masks)


def itc_similarity(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Max over queries of the cosine similarity: (N_img, Q, E), (N_txt, E) -> (N_img, N_txt)."""
    return torch.einsum("iqe,te->itq", image_embeds, text_embeds).amax(dim=-1)


@torch.no_grad()
def itm_rerank(model, similarity, pixels, mae_pixels, ids, masks, k: int) -> torch.Tensor:
    """Replace each image's top-k ITC scores by ITC + ITM match probability (both directions use this matrix)."""
    k = min(k, similarity.shape[1])
    scores = torch.full_like(similarity, -1e4)
    top_scores, top_texts = similarity.topk(k, dim=1)  # N_img, k
    image_index = torch.arange(similarity.shape[0]).repeat_interleave(k)
    text_index = top_texts.reshape(-1)
    itm = model.compute_itm_scores(pixels[image_index], ids[text_index], masks[text_index], mae_pixels[image_index])
    scores.scatter_(1, top_texts, top_scores + itm.view(-1, k))
    return scores


def recall_at(similarity: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Image i matches text i. Text-retrieval (rows) and image-retrieval (columns) recall@k in %."""
    truth = torch.arange(similarity.shape[0])
    ranks_i2t = (similarity.argsort(dim=1, descending=True) == truth[:, None]).float().argmax(dim=1)
    ranks_t2i = (similarity.t().argsort(dim=1, descending=True) == truth[:, None]).float().argmax(dim=1)
    results = {}
    for k in ks:
        results[f"i2t R@{k}"] = 100 * (ranks_i2t < k).float().mean().item()
        results[f"t2i R@{k}"] = 100 * (ranks_t2i < k).float().mean().item()
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="stage-1 X-Former folder with its processor (default: tiny random)")
    parser.add_argument("--data", help="JSON list of {image, caption} (default: synthetic pairs)")
    parser.add_argument("--image-folder")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rerank-k", type=int, default=4, help="ITM re-ranks each image's top k texts (BLIP-2: 128)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    if args.model is None:
        torch.set_num_threads(1)
        pairs = synthetic_pairs(56)
        tokenizer = tiny_word_tokenizer([caption for _, caption in pairs])
        config = tiny_config(len(tokenizer), len(tokenizer), 56, tokenizer.convert_tokens_to_ids("[DEC]"),
                             tokenizer.pad_token_id)
        model, processor = XFormerModel(config), XFormerProcessor(build_clip_image_processor(56), tokenizer)
    else:
        pairs = json_pairs(args.data, args.image_folder)
        model, processor = XFormerModel.from_pretrained(args.model), AutoProcessor.from_pretrained(args.model)
    model.eval()
    image_embeds, text_embeds, pixels, mae_pixels, ids, masks = encode(model, processor, pairs, args.batch_size)
    similarity = itc_similarity(image_embeds, text_embeds)
    reranked = itm_rerank(model, similarity, pixels, mae_pixels, ids, masks, args.rerank_k)
    print(f"| scoring ({len(pairs)} pairs) | " + " | ".join(recall_at(similarity)) + " |")
    print("| --- |" + " --- |" * len(recall_at(similarity)))
    for name, scores in (("ITC", similarity), (f"ITC + ITM top-{args.rerank_k}", reranked)):
        print(f"| {name} | " + " | ".join(f"{value:.1f}" for value in recall_at(scores).values()) + " |")


if __name__ == "__main__":
    main()


__all__ = ["itc_similarity", "itm_rerank", "recall_at"]
