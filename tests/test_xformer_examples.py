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
"""The X-Former examples' building blocks: collator, recall@k, ITM re-ranking, and a Trainer step with kwargs."""

import sys
from pathlib import Path

import pytest
import torch
from test_xformer_helpers import single_thread  # noqa: F401  (used through pytestmark)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from pretrain_xformer import PairCollator, synthetic_pairs, tiny_config, tiny_word_tokenizer  # noqa: E402
from retrieval_xformer import itc_similarity, itm_rerank, recall_at  # noqa: E402

from modeling_croc import XFormerForConditionalGeneration, XFormerModel, XFormerProcessor  # noqa: E402
from modeling_croc.processing_xformer import build_clip_image_processor  # noqa: E402


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def setup():
    pairs = synthetic_pairs(56)
    tokenizer = tiny_word_tokenizer([caption for _, caption in pairs])
    config = tiny_config(len(tokenizer), len(tokenizer), 56, tokenizer.convert_tokens_to_ids("[DEC]"),
                         tokenizer.pad_token_id)
    return pairs, XFormerProcessor(build_clip_image_processor(56), tokenizer), config


def test_recall_at_k_on_known_rankings():
    similarity = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.7, 0.0], [0.0, 0.1, 0.2]])
    recall = recall_at(similarity, ks=(1, 2))
    assert recall["i2t R@1"] == pytest.approx(200 / 3) and recall["i2t R@2"] == 100
    assert recall["t2i R@1"] == 100  # columns: each text's best image is its own


def test_itc_similarity_is_max_over_queries():
    image = torch.nn.functional.normalize(torch.randn(3, 4, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    brute = torch.stack([torch.stack([(image[i] @ text[t]).max() for t in range(5)]) for i in range(3)])
    torch.testing.assert_close(itc_similarity(image, text), brute)


def test_collator_and_itm_rerank_match_pairwise_scoring(setup):
    pairs, processor, config = setup
    torch.manual_seed(0)
    model = XFormerModel(config).eval()
    batch = PairCollator(processor, 56, 16, stage=1, augment=False)(
        [{"image": image, "caption": caption} for image, caption in pairs[:4]]
    )
    assert batch["pixel_values"].shape == batch["mae_pixel_values"].shape == (4, 3, 56, 56) and "labels" not in batch
    similarity = torch.rand(4, 4, generator=torch.Generator().manual_seed(0))
    reranked = itm_rerank(model, similarity, batch["pixel_values"], batch["mae_pixel_values"], batch["input_ids"],
                          batch["attention_mask"], k=2)
    top_text = similarity[1].argmax()
    pair_score = model.compute_itm_scores(batch["pixel_values"][1:2], batch["input_ids"][top_text][None],
                                          batch["attention_mask"][top_text][None], batch["mae_pixel_values"][1:2])
    torch.testing.assert_close(reranked[1, top_text], similarity[1, top_text] + pair_score[0])
    assert (reranked < -1e3).sum() == 4 * 2  # texts outside each image's top 2 are pushed down


def test_stage2_trainer_step_passes_num_items_in_batch(setup, tmp_path):
    from transformers import Trainer, TrainingArguments

    pairs, processor, config = setup
    processor.tokenizer.padding_side = "right"
    collator = PairCollator(processor, 56, 16, stage=2)
    batch = collator([{"image": image, "caption": caption} for image, caption in pairs[:2]])
    assert torch.equal(batch["labels"], batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    torch.manual_seed(0)
    model = XFormerForConditionalGeneration(config)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2, report_to=[],
                             use_cpu=True, remove_unused_columns=False, save_strategy="no", disable_tqdm=True,
                             gradient_accumulation_steps=2)
    dataset = [{"image": image, "caption": caption} for image, caption in pairs]
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    assert trainer.model_accepts_loss_kwargs  # forward(**kwargs) -> `num_items_in_batch` reaches the loss
    before = model.language_projection.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, model.language_projection.weight)
    assert all(not p.requires_grad for p in model.language_model.parameters())


def test_pretrain_example_runs_both_stages_with_no_data(tmp_path, capsys):
    from pretrain_xformer import main

    main(["--output-dir", str(tmp_path), "--max-steps", "2"])
    printed = capsys.readouterr().out
    assert "stage 1: 2 steps" in printed and "stage 2: 2 steps" in printed and "caption for image 0" in printed
    stage1 = XFormerModel.from_pretrained(tmp_path / "stage1")
    stage2 = XFormerForConditionalGeneration.from_pretrained(tmp_path / "stage2")
    torch.testing.assert_close(stage2.vision_model.post_layernorm.weight, stage1.vision_model.post_layernorm.weight)
    assert (tmp_path / "stage2" / "processor_config.json").exists()
