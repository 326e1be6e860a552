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
"""Tests for LlavaConversationDataset and CrocDataCollator: loss masks, images, padding and truncation."""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from modeling_croc.data_croc import (
    IGNORE_INDEX,
    CrocDataCollator,
    LlavaConversationDataset,
    mask_matches_spans,
    supervised_token_mask,
)
from modeling_croc.image_processing_croc import CrocImageProcessor
from modeling_croc.processing_croc import VICUNA_V1_SYSTEM_PROMPT, CrocProcessor


FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOKENIZER_DIR = FIXTURES / "croc-tiny-official" / "tokenizer"
DATA_PATH = FIXTURES / "conversations.json"
IMAGE_FOLDER = FIXTURES / "images"
NUM_IMAGE_TOKENS = 16  # 56-px crops, 14-px patches


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def processor(tokenizer):
    return CrocProcessor(CrocImageProcessor(size={"shortest_edge": 56}, crop_size=56), tokenizer)


@pytest.fixture(scope="module")
def dataset():
    return LlavaConversationDataset(str(DATA_PATH), image_folder=str(IMAGE_FOLDER))


@pytest.fixture(scope="module")
def samples_by_id(dataset):
    return {dataset[index]["id"]: dataset[index] for index in range(len(dataset))}


def supervised_runs(labels: torch.Tensor) -> list[list[int]]:
    """Contiguous runs of supervised label ids."""
    runs, current = [], []
    for label in labels.tolist():
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


def answers(sample) -> list[str]:
    return [turn["value"] for turn in sample["conversations"] if turn["from"] == "gpt"]


# ----------------------------------------------------------------------------------------------------- dataset


def test_dataset_reads_llava_json(dataset):
    raw = json.loads(DATA_PATH.read_text())
    assert len(dataset) == len(raw) == 7
    first = dataset[0]
    assert first["id"] == "detailed-caption-0" and isinstance(first["image"], PIL.Image.Image)
    assert first["conversations"] == raw[0]["conversations"]
    text_only = [dataset[index] for index in range(len(dataset)) if dataset[index]["image"] is None]
    assert [sample["id"] for sample in text_only] == ["text-only-3", "text-only-multi-turn-4"]


def test_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="conversations"):
        LlavaConversationDataset([{"id": 1}])
    no_folder = LlavaConversationDataset([{"id": "x", "image": "a.png", "conversations": []}])
    with pytest.raises(ValueError, match="image_folder"):
        no_folder[0]
    several = LlavaConversationDataset([{"id": "x", "image": ["a.png", "b.png"], "conversations": []}], str(tmp_path))
    with pytest.raises(ValueError, match="one image per sample"):
        several[0]
    missing = LlavaConversationDataset([{"id": "x", "image": "a.png", "conversations": []}], str(tmp_path))
    with pytest.raises(FileNotFoundError, match="a.png"):
        missing[0]


# ---------------------------------------------------------------------------------------------- v1 loss mask


def test_v1_labels_supervise_exactly_each_answer_and_eos(processor, tokenizer, dataset):
    collator = CrocDataCollator(processor)
    for index in range(len(dataset)):
        sample = dataset[index]
        batch = collator([sample])
        runs = supervised_runs(batch["labels"][0])
        decoded = [tokenizer.decode(run) for run in runs]
        assert decoded == [answer + "</s>" for answer in answers(sample)], sample["id"]
        assert all(run[-1] == tokenizer.eos_token_id for run in runs)


def test_v1_hand_checked_example(processor, tokenizer, samples_by_id):
    """Default (official) layout: the text after the image is tokenised on its own, starting with the "▁" prefix."""
    sample = samples_by_id["short-qa-1"]
    batch = CrocDataCollator(processor)([sample])
    head = tokenizer(f"{VICUNA_V1_SYSTEM_PROMPT} USER: ").input_ids
    question = tokenizer("\nWhat shape is shown? ASSISTANT:", add_special_tokens=False).input_ids
    tail = tokenizer("\nWhat shape is shown? ASSISTANT: A blue circle.</s>", add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(tail[:2]) == ["▁", "<0x0A>"] and tail[: len(question)] == question
    expanded = head + [processor.image_token_id] * NUM_IMAGE_TOKENS + tail
    assert batch["input_ids"][0].tolist() == expanded
    answer_start = len(head) + NUM_IMAGE_TOKENS + len(question)
    assert batch["labels"][0].tolist() == [IGNORE_INDEX] * answer_start + expanded[answer_start:]
    assert tokenizer.decode(expanded[answer_start:]) == "A blue circle.</s>"


def test_v1_hand_checked_example_one_pass(processor, tokenizer, samples_by_id):
    """`tokenize_images_separately=False`: the whole prompt in one pass, no "▁" after the image."""
    sample = samples_by_id["short-qa-1"]
    batch = CrocDataCollator(processor, tokenize_images_separately=False)([sample])
    prefix = f"{VICUNA_V1_SYSTEM_PROMPT} USER: <image>\nWhat shape is shown? ASSISTANT:"
    full_text = prefix + " A blue circle.</s>"
    prefix_ids = tokenizer(prefix).input_ids
    full_ids = tokenizer(full_text).input_ids
    image_position = full_ids.index(processor.image_token_id)
    image_run = [processor.image_token_id] * NUM_IMAGE_TOKENS
    expanded = full_ids[:image_position] + image_run + full_ids[image_position + 1 :]
    assert batch["input_ids"][0].tolist() == expanded
    answer_start = len(prefix_ids) + NUM_IMAGE_TOKENS - 1
    expected_labels = [IGNORE_INDEX] * answer_start + expanded[answer_start:]
    assert batch["labels"][0].tolist() == expected_labels
    assert tokenizer.decode(expanded[answer_start:]) == "A blue circle.</s>"
    assert batch["labels"][0, 0] == IGNORE_INDEX  # BOS
    assert (batch["labels"][0][batch["input_ids"][0] == processor.image_token_id] == IGNORE_INDEX).all()


def test_multi_turn_masks_every_user_turn(processor, tokenizer, samples_by_id):
    sample = samples_by_id["multi-turn-2"]
    batch = CrocDataCollator(processor)([sample])
    labels, input_ids = batch["labels"][0], batch["input_ids"][0]
    ignored_text = tokenizer.decode(input_ids[(labels == IGNORE_INDEX) & (input_ids != processor.image_token_id)])
    for question in ("What is in the image?", "How many corners does it have?", "Is it pointing up or down?"):
        assert question in ignored_text
    assert ignored_text.count("ASSISTANT:") == 3 and ignored_text.count("USER:") == 3
    assert len(supervised_runs(labels)) == 3


# ------------------------------------------------------------------------------------------------- batching


def test_batch_with_text_only_samples(processor, dataset):
    samples = [dataset[index] for index in range(len(dataset))]
    batch = CrocDataCollator(processor)(samples)
    image_samples = [sample for sample in samples if sample["image"] is not None]
    assert batch["pixel_values"].shape == (len(image_samples), 3, 56, 56)
    for image_index, sample in enumerate(image_samples):  # images in sample order
        alone = processor.image_processor(sample["image"], return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(batch["pixel_values"][image_index], alone)
    image_token_counts = (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert image_token_counts == [NUM_IMAGE_TOKENS if sample["image"] is not None else 0 for sample in samples]


def test_text_only_batch_has_no_pixel_values(processor, samples_by_id):
    batch = CrocDataCollator(processor)([samples_by_id["text-only-3"], samples_by_id["text-only-multi-turn-4"]])
    assert "pixel_values" not in batch and set(batch) == {"input_ids", "attention_mask", "labels"}


def test_right_padding(processor, tokenizer, samples_by_id):
    short, long = samples_by_id["text-only-3"], samples_by_id["detailed-caption-0"]
    batch = CrocDataCollator(processor)([short, long])
    lengths = batch["attention_mask"].sum(dim=1)
    assert lengths[0] < lengths[1] == batch["input_ids"].shape[1]
    padding = batch["attention_mask"][0] == 0
    assert padding[lengths[0] :].all() and not padding[: lengths[0]].any()
    assert (batch["input_ids"][0][padding] == tokenizer.pad_token_id).all()
    assert (batch["labels"][0][padding] == IGNORE_INDEX).all()
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long


def test_default_size_gives_576_image_tokens(tokenizer, samples_by_id):
    processor = CrocProcessor(CrocImageProcessor(), tokenizer)
    batch = CrocDataCollator(processor)([samples_by_id["short-qa-1"]])
    assert (batch["input_ids"] == processor.image_token_id).sum().item() == 576
    assert batch["pixel_values"].shape == (1, 3, 336, 336)


def test_aspect_ratio_follows_processor_unless_overridden(processor, samples_by_id):
    sample = samples_by_id["detailed-caption-0"]  # 40 x 30, not square
    padded = CrocDataCollator(processor)([sample])["pixel_values"]
    squared = CrocDataCollator(processor, image_aspect_ratio="square")([sample])["pixel_values"]
    expected = processor.image_processor(sample["image"], image_aspect_ratio="square", return_tensors="pt")
    torch.testing.assert_close(squared, expected["pixel_values"])
    assert not torch.allclose(padded, squared)


def test_works_with_a_dataloader(processor, dataset):
    loader = DataLoader(dataset, batch_size=3, collate_fn=CrocDataCollator(processor))
    batches = list(loader)
    assert [batch["input_ids"].shape[0] for batch in batches] == [3, 3, 1]


# ----------------------------------------------------------------------------------------------- truncation


def test_truncation_cuts_text_after_the_image(processor, samples_by_id):
    sample = samples_by_id["detailed-caption-0"]
    full = CrocDataCollator(processor)([sample])
    image_end = (full["input_ids"][0] == processor.image_token_id).nonzero().max().item() + 1
    max_length = image_end + 10
    truncated = CrocDataCollator(processor, max_length=max_length)([sample])
    assert truncated["input_ids"].shape == (1, max_length)
    torch.testing.assert_close(truncated["input_ids"][0], full["input_ids"][0, :max_length])
    torch.testing.assert_close(truncated["labels"][0], full["labels"][0, :max_length])
    assert (truncated["input_ids"] == processor.image_token_id).sum().item() == NUM_IMAGE_TOKENS


def test_truncation_inside_an_image_is_refused(processor, samples_by_id):
    sample = samples_by_id["short-qa-1"]
    with pytest.raises(ValueError, match=r"image tokens end at position \d+ but max_length is 40"):
        CrocDataCollator(processor, max_length=40)([sample])


def test_truncation_of_text_only_samples(processor, samples_by_id):
    batch = CrocDataCollator(processor, max_length=12)([samples_by_id["text-only-3"]])
    assert batch["input_ids"].shape == (1, 12) and (batch["labels"] == IGNORE_INDEX).all()


# -------------------------------------------------------------------------------------------- robustness


class ShiftedOffsetsTokenizer:
    """A tokenizer proxy whose offsets are off by a few characters, as a silently changed tokenizer could be."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, text, **kwargs):
        encoding = self.tokenizer(text, **kwargs)
        offsets = encoding["offset_mapping"]
        encoding["offset_mapping"] = [(start + 3, end + 3) if end > start else (start, end) for start, end in offsets]
        return encoding


def test_mismatch_blanks_the_target_with_a_warning(processor, samples_by_id):
    collator = CrocDataCollator(processor)
    collator.tokenizer = ShiftedOffsetsTokenizer(processor.tokenizer)
    with pytest.warns(UserWarning, match="Tokenization mismatch in sample short-qa-1"):
        batch = collator([samples_by_id["short-qa-1"]])
    assert (batch["labels"] == IGNORE_INDEX).all()


def test_mask_check_requires_coverage_matching_text_and_eos(tokenizer):
    text = "USER: hi ASSISTANT: A blue circle.</s>"
    encoding = tokenizer(text, return_offsets_mapping=True)
    input_ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    span = (text.index("A blue"), len(text))
    mask = [end > span[0] and start >= span[0] - 1 and end > start for start, end in offsets]
    assert tokenizer.decode([token for token, flag in zip(input_ids, mask) if flag]) == "A blue circle.</s>"
    assert mask_matches_spans(tokenizer, text, input_ids, offsets, mask, [span])
    with_gap = list(mask)
    with_gap[mask.index(True) + 2] = False
    assert not mask_matches_spans(tokenizer, text, input_ids, offsets, with_gap, [span])
    assert not mask_matches_spans(tokenizer, text, input_ids, offsets, [False] * len(mask), [span])
    shifted = [(start + 3, end + 3) if end > start else (start, end) for start, end in offsets]
    shifted_mask = supervised_token_mask(shifted, [span])
    assert not mask_matches_spans(tokenizer, text, input_ids, shifted, shifted_mask, [span])
    split_eos = input_ids[:-1] + tokenizer("</s>", add_special_tokens=False, split_special_tokens=True).input_ids
    split_offsets = offsets[:-1] + [(offsets[-1][0], offsets[-1][1])] * (len(split_eos) - len(input_ids) + 1)
    split_mask = mask[:-1] + [True] * (len(split_eos) - len(input_ids) + 1)
    assert not mask_matches_spans(tokenizer, text, split_eos, split_offsets, split_mask, [span])


def test_image_placeholder_mismatches_are_errors(processor, samples_by_id):
    collator = CrocDataCollator(processor)
    text_only = dict(samples_by_id["text-only-3"], image=samples_by_id["short-qa-1"]["image"])
    with pytest.raises(ValueError, match="has 1 image.* but 0 <image> placeholder"):
        collator([text_only])
    no_image = dict(samples_by_id["short-qa-1"], image=None)
    with pytest.raises(ValueError, match="has 0 image.* but 1 <image> placeholder"):
        collator([no_image])


# ---------------------------------------------------------------------------------------------------- plain


def test_plain_format_supervises_caption_and_newline(processor, tokenizer, samples_by_id):
    collator = CrocDataCollator(processor, conversation_format="plain")
    sample = samples_by_id["caption-6"]
    batch = collator([sample])
    input_ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0]
    assert input_ids[0] == tokenizer.bos_token_id
    assert input_ids[1 : 1 + NUM_IMAGE_TOKENS] == [processor.image_token_id] * NUM_IMAGE_TOKENS
    assert tokenizer.decode(input_ids[1 + NUM_IMAGE_TOKENS :]) == "a red square\n"
    assert (labels[: 1 + NUM_IMAGE_TOKENS] == IGNORE_INDEX).all()
    assert labels[1 + NUM_IMAGE_TOKENS :].tolist() == input_ids[1 + NUM_IMAGE_TOKENS :]


def test_plain_format_needs_one_caption_turn(processor, samples_by_id):
    collator = CrocDataCollator(processor, conversation_format="plain")
    with pytest.raises(ValueError, match="plain format"):
        collator([samples_by_id["multi-turn-2"]])
    with pytest.raises(ValueError, match="conversation_format"):
        CrocDataCollator(processor, conversation_format="llama_2")


def test_malformed_conversation_names_the_sample(processor):
    sample = {
        "id": "two-questions",
        "image": None,
        "conversations": [{"from": "human", "value": "Hi?"}, {"from": "human", "value": "Hello?"}],
    }
    with pytest.raises(ValueError, match="Sample two-questions cannot be formatted.*alternate"):
        CrocDataCollator(processor)([sample])
