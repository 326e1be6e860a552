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
"""
Processor and collator ids (and v1/plain labels) against the official tokenisation, on a tiny SentencePiece model.

The official code (LLaVA's `tokenizer_image_token` with the slow Vicuna `LlamaTokenizer` of transformers 4.37) splits
the prompt at `<image>`, tokenises every chunk on its own and keeps one BOS. The references below re-derive those ids
from the `sentencepiece` processor itself, independently of transformers' tokenizers:

* the slow tokenizer splits a text at its special tokens (`<unk>`, `<s>`, `</s>`) and encodes each text segment with
  SentencePiece; with `legacy=True` every segment gets SentencePiece's dummy prefix "▁", with `legacy=False` only the
  first one does (the text right after a special token gets none);
* the transformers model is a Llama-style BPE SentencePiece model trained here in a few milliseconds (byte fallback,
  dummy prefix, identity normalisation, like Vicuna's) and loaded as transformers' (fast) `LlamaTokenizer`.
"""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io
import json
import re

import PIL.Image
import pytest
import sentencepiece
from sentencepiece import sentencepiece_model_pb2
from transformers import AutoTokenizer, SentencePieceBackend

from modeling_croc.data_croc import IGNORE_INDEX, CrocDataCollator
from modeling_croc.image_processing_croc import CrocImageProcessor
from modeling_croc.processing_croc import VICUNA_V1_SYSTEM_PROMPT, CrocProcessor, add_image_token


SYSTEM = VICUNA_V1_SYSTEM_PROMPT
OFFICIAL_IMAGE_ID = -200  # the official image sentinel
BOS_ID, EOS_ID = 1, 2
SPECIAL_TOKEN_IDS = {"<unk>": 0, "<s>": BOS_ID, "</s>": EOS_ID}
SPECIAL_TOKENS_PATTERN = "(" + "|".join(re.escape(token) for token in SPECIAL_TOKEN_IDS) + ")"
NUM_IMAGE_TOKENS = 16  # 56-px crops of 14-px patches

TRAINING_TEXT = [
    SYSTEM,
    "USER: What is in the image? ASSISTANT: A red square on a white background.",
    "USER: Describe the image in detail. ASSISTANT: The image shows a blue circle next to a green triangle.",
    "USER: What colour is the circle? ASSISTANT: The circle is blue.",
    "USER: How many corners does it have? ASSISTANT: It has three corners.",
    "A photo of a cat sitting on a wooden table near the window.",
    "The quick brown fox jumps over the lazy dog.",
]

PROMPTS = {
    "image first": "<image>\nWhat is this?",
    "image in the middle": f"{SYSTEM} USER: <image>\nWhat is in the image? ASSISTANT:",
    "image-only turn": f"{SYSTEM} USER: <image> ASSISTANT:",
    "multi-turn": (
        f"{SYSTEM} USER: <image>\nWhat is in the image? ASSISTANT: A red square.</s>"
        "USER: What colour is it? ASSISTANT:"
    ),
    "text only": f"{SYSTEM} USER: What colour is the circle? ASSISTANT: The circle is blue.</s>USER: Why? ASSISTANT:",
    "two images": "USER: <image> one <image>\ntwo ASSISTANT:",
    "adjacent images, one at the end": "<image><image>\nCompare them with this: <image>",
}


# ------------------------------------------------------------------------------------ tiny SentencePiece model


def train_sentencepiece_model() -> bytes:
    """A deterministic Llama-style BPE model: <unk>, <s>, </s> = 0, 1, 2, 256 byte pieces, dummy prefix."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING_TEXT * 3), model_writer=model, model_type="bpe", vocab_size=400,
        byte_fallback=True, add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, normalization_rule_name="identity", character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2,
    )
    return model.getvalue()


def without_dummy_prefix(model_proto: bytes) -> bytes:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    proto.normalizer_spec.add_dummy_prefix = False
    return proto.SerializeToString()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sentencepiece")
    (directory / "tokenizer.model").write_bytes(train_sentencepiece_model())
    return directory


@pytest.fixture(scope="module")
def spm(model_dir):
    """The SentencePiece processor as the official slow tokenizer uses it, with and without the dummy prefix."""
    model_proto = (model_dir / "tokenizer.model").read_bytes()
    return {
        "prefixed": sentencepiece.SentencePieceProcessor(model_proto=model_proto),
        "plain": sentencepiece.SentencePieceProcessor(model_proto=without_dummy_prefix(model_proto)),
    }


def load_tokenizer(model_dir, tmp_path_factory, legacy: bool):
    """transformers' (fast) LlamaTokenizer converted from the SentencePiece model, with `<image>` added."""
    directory = tmp_path_factory.mktemp(f"tokenizer-legacy-{legacy}")
    (directory / "tokenizer.model").write_bytes((model_dir / "tokenizer.model").read_bytes())
    config = {
        "tokenizer_class": "LlamaTokenizer", "legacy": legacy, "add_bos_token": True, "add_eos_token": False,
        "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "padding_side": "right",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    assert add_image_token(tokenizer) == 400
    return tokenizer


@pytest.fixture(scope="module", params=[True, False], ids=["legacy", "non-legacy"])
def legacy(request):
    return request.param


@pytest.fixture(scope="module")
def tokenizers_by_legacy(model_dir, tmp_path_factory):
    return {legacy: load_tokenizer(model_dir, tmp_path_factory, legacy) for legacy in (True, False)}


def make_processor(tokenizer, tokenize_images_separately=True):
    image_processor = CrocImageProcessor(size={"shortest_edge": 56}, crop_size=56)
    return CrocProcessor(image_processor, tokenizer, tokenize_images_separately=tokenize_images_separately)


def red_image():
    return PIL.Image.new("RGB", (40, 30), (255, 0, 0))


# --------------------------------------------------------------------------------- official references


def official_slow_ids(spm, text: str, legacy: bool) -> list[int]:
    """`LlamaTokenizer(text).input_ids` of the official slow tokenizer (transformers 4.37), from SentencePiece."""
    input_ids = [BOS_ID]
    segments = [segment for segment in re.split(SPECIAL_TOKENS_PATTERN, text) if segment]
    for index, segment in enumerate(segments):
        if segment in SPECIAL_TOKEN_IDS:
            input_ids.append(SPECIAL_TOKEN_IDS[segment])
        elif legacy or index == 0:
            input_ids += spm["prefixed"].encode(segment)
        else:  # non-legacy: no prefix right after a special token
            input_ids += spm["plain"].encode(segment)
    return input_ids


def official_image_token_ids(spm, prompt: str, legacy: bool) -> list[int]:
    """The official `tokenizer_image_token`: chunks at `<image>` tokenised apart, one BOS, a sentinel per image."""
    chunks = [official_slow_ids(spm, chunk, legacy) for chunk in prompt.split("<image>")]
    input_ids = [BOS_ID]
    for index, chunk in enumerate(chunks):
        if index > 0:
            input_ids.append(OFFICIAL_IMAGE_ID)
        input_ids += chunk[1:]  # every chunk's BOS dropped, the first one kept above
    return input_ids


def expand_sentinels(input_ids: list[int], image_token_id: int) -> list[int]:
    """Official layout (one sentinel per image) -> ours (`NUM_IMAGE_TOKENS` image tokens per image)."""
    expanded = []
    for token in input_ids:
        expanded += [image_token_id] * NUM_IMAGE_TOKENS if token == OFFICIAL_IMAGE_ID else [token]
    return expanded


def expand_labels(input_ids: list[int], labels: list[int]) -> list[int]:
    """Official labels -> ours: `NUM_IMAGE_TOKENS` ignored labels at each image sentinel of `input_ids`."""
    expanded = []
    for token, label in zip(input_ids, labels):
        expanded += [IGNORE_INDEX] * NUM_IMAGE_TOKENS if token == OFFICIAL_IMAGE_ID else [label]
    return expanded


def official_v1_labels(spm, conversation: str, legacy: bool) -> list[int]:
    """
    The official `preprocess_v1` mask, re-derived: per `</s>`-separated round, skip the round's instruction through
    `"ASSISTANT: "` (its token count minus BOS and the trailing "▁") and advance by the round's token count (its BOS
    standing for the `</s>`); a total that disagrees with the ids blanks the sample. Non-legacy tokenizers count one
    token fewer per round after the first. Image positions carry the sentinel (inside an instruction, so ignored).
    """
    input_ids = official_image_token_ids(spm, conversation, legacy)
    labels = [IGNORE_INDEX] + input_ids[1:]
    position = 1
    for round_index, round_text in enumerate(conversation.split("</s>")):
        if not round_text:
            break
        parts = round_text.split(" ASSISTANT: ")
        if len(parts) != 2:
            break
        round_length = len(official_image_token_ids(spm, round_text, legacy))
        instruction_length = len(official_image_token_ids(spm, parts[0] + " ASSISTANT: ", legacy)) - 2
        if round_index > 0 and not legacy:
            round_length, instruction_length = round_length - 1, instruction_length - 1
        labels[position : position + instruction_length] = [IGNORE_INDEX] * instruction_length
        position += round_length
    labels[position:] = [IGNORE_INDEX] * (len(labels) - position)
    if position != len(input_ids):
        return [IGNORE_INDEX] * len(input_ids)
    return labels


def official_plain_labels(spm, caption: str) -> list[int]:
    """The official `preprocess_plain` mask: everything after `tokenizer_image_token("<image>")` (BOS, image)."""
    input_ids = official_image_token_ids(spm, "<image>" + caption + "\n", legacy=True)
    num_ignored = len(official_image_token_ids(spm, "<image>", legacy=True))
    return [IGNORE_INDEX] * num_ignored + input_ids[num_ignored:]


# ------------------------------------------------------------------------------------------ the references


def test_reference_matches_transformers_sentencepiece_backend(model_dir, spm):
    """The legacy reference equals transformers' own SentencePiece backend (legacy=True), which adds no BOS."""
    backend = SentencePieceBackend(
        vocab_file=str(model_dir / "tokenizer.model"), legacy=True, unk_token="<unk>", bos_token="<s>",
        eos_token="</s>",
    )
    for prompt in PROMPTS.values():
        for chunk in prompt.split("<image>"):
            assert official_slow_ids(spm, chunk, legacy=True) == [BOS_ID] + backend(chunk).input_ids


def test_reference_reproduces_the_sentencepiece_prefix_after_an_image(spm):
    ids = official_image_token_ids(spm, PROMPTS["image in the middle"], legacy=True)
    after_image = ids[ids.index(OFFICIAL_IMAGE_ID) + 1 :]
    assert [spm["prefixed"].id_to_piece(token) for token in after_image[:2]] == ["▁", "<0x0A>"]


# ------------------------------------------------------------------------------------------------ processor


@pytest.mark.parametrize("name", list(PROMPTS))
def test_processor_ids_equal_the_official_ids(tokenizers_by_legacy, spm, legacy, name):
    prompt = PROMPTS[name]
    processor = make_processor(tokenizers_by_legacy[legacy])
    images = [red_image() for _ in range(prompt.count("<image>"))] or None
    ours = processor(text=prompt, images=images)["input_ids"][0]
    official = expand_sentinels(official_image_token_ids(spm, prompt, legacy), processor.image_token_id)
    assert ours == official


@pytest.mark.parametrize("name", list(PROMPTS))
def test_one_pass_option_tokenizes_the_expanded_prompt_at_once(tokenizers_by_legacy, name):
    tokenizer = tokenizers_by_legacy[True]
    prompt = PROMPTS[name]
    processor = make_processor(tokenizer, tokenize_images_separately=False)
    images = [red_image() for _ in range(prompt.count("<image>"))] or None
    ours = processor(text=prompt, images=images)["input_ids"][0]
    assert ours == tokenizer(prompt.replace("<image>", "<image>" * NUM_IMAGE_TOKENS)).input_ids


def test_one_pass_misses_the_prefix_after_the_image(tokenizers_by_legacy, spm):
    """
    The difference the option exists for: `[image..., "▁", "\\n", ...]` officially, `[image..., "\\n"]` in one pass
    with a non-legacy tokenizer (Metaspace prefix on the first text only). A legacy one happens to prefix the text
    after every added token, `<image>` included.
    """
    tokenizer = tokenizers_by_legacy[False]
    prompt = PROMPTS["image in the middle"]
    chunked = make_processor(tokenizer)(text=prompt, images=red_image())["input_ids"][0]
    one_pass = make_processor(tokenizer, False)(text=prompt, images=red_image())["input_ids"][0]
    image_end = len(chunked) - chunked[::-1].index(400)
    assert tokenizer.convert_ids_to_tokens(chunked[image_end : image_end + 2]) == ["▁", "<0x0A>"]
    assert tokenizer.convert_ids_to_tokens(one_pass[image_end : image_end + 1]) == ["<0x0A>"]
    assert chunked[:image_end] == one_pass[:image_end] and len(chunked) == len(one_pass) + 1


def test_padded_batch_rows_equal_the_official_ids(tokenizers_by_legacy, spm):
    processor = make_processor(tokenizers_by_legacy[True])
    prompts = [PROMPTS["image in the middle"], PROMPTS["two images"]]
    batch = processor(
        text=prompts, images=[[red_image()], [red_image(), red_image()]], padding=True, padding_side="left",
        return_tensors="pt",
    )
    for row, mask, prompt in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), prompts):
        official = expand_sentinels(official_image_token_ids(spm, prompt, True), processor.image_token_id)
        assert row[len(row) - sum(mask) :] == official and all(mask[len(row) - sum(mask) :])


# ------------------------------------------------------------------------------------------------- collator

V1_SAMPLES = [
    {
        "id": "multi-turn-with-image",
        "image": True,
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the image?"},
            {"from": "gpt", "value": "A red square on a white background."},
            {"from": "human", "value": "How many corners does it have?"},
            {"from": "gpt", "value": "4 corners, like every square."},  # starts with a lone "▁" token
            {"from": "human", "value": "What colour is the circle?"},
            {"from": "gpt", "value": "The circle is blue."},
        ],
    },
    {
        "id": "text-only",
        "image": False,
        "conversations": [
            {"from": "human", "value": "What colour is the circle?"},
            {"from": "gpt", "value": "The circle is blue."},
            {"from": "human", "value": "Why?"},
            {"from": "gpt", "value": "\nIt was painted."},
        ],
    },
]


def supervised_runs(labels: list[int]) -> list[list[int]]:
    runs, current = [], []
    for label in labels + [IGNORE_INDEX]:
        if label == IGNORE_INDEX and current:
            runs.append(current)
            current = []
        elif label != IGNORE_INDEX:
            current.append(label)
    return runs


def official_v1_prompt(conversations: list[dict]) -> str:
    """The official vicuna_v1 `get_prompt()` of a conversation whose image placeholder is already at the start."""
    text = SYSTEM + " "
    for turn in conversations:
        role = "USER" if turn["from"] == "human" else "ASSISTANT"
        text += f"{role}: {turn['value']} " if role == "USER" else f"{role}: {turn['value']}</s>"
    return text


def collator_sample(sample: dict) -> dict:
    image = red_image() if sample["image"] else None
    return {"id": sample["id"], "conversations": sample["conversations"], "image": image}


@pytest.mark.parametrize("sample", V1_SAMPLES, ids=[sample["id"] for sample in V1_SAMPLES])
def test_v1_ids_and_labels_equal_the_official_v1_mask(tokenizers_by_legacy, spm, sample):
    processor = make_processor(tokenizers_by_legacy[True])
    batch = CrocDataCollator(processor)([collator_sample(sample)])
    conversation = official_v1_prompt(sample["conversations"])
    official_ids = official_image_token_ids(spm, conversation, legacy=True)
    official_labels = official_v1_labels(spm, conversation, legacy=True)
    assert any(label != IGNORE_INDEX for label in official_labels)  # the official lengths agree: not blanked
    assert batch["input_ids"][0].tolist() == expand_sentinels(official_ids, processor.image_token_id)
    assert batch["labels"][0].tolist() == expand_labels(official_ids, official_labels)


def test_answer_starting_with_a_digit_supervises_its_lone_prefix_token(tokenizers_by_legacy):
    """The official mask starts at the token holding the space after "ASSISTANT:", here a lone "▁" before "4"."""
    processor = make_processor(tokenizers_by_legacy[True])
    batch = CrocDataCollator(processor)([collator_sample(V1_SAMPLES[0])])
    second_answer = supervised_runs(batch["labels"][0].tolist())[1]
    assert processor.tokenizer.convert_ids_to_tokens(second_answer[:2]) == ["▁", "<0x34>"]


def test_v1_ids_equal_the_official_ids_with_a_non_legacy_tokenizer(tokenizers_by_legacy, spm):
    processor = make_processor(tokenizers_by_legacy[False])
    sample = V1_SAMPLES[0]
    batch = CrocDataCollator(processor)([collator_sample(sample)])
    official_ids = official_image_token_ids(spm, official_v1_prompt(sample["conversations"]), legacy=False)
    assert batch["input_ids"][0].tolist() == expand_sentinels(official_ids, processor.image_token_id)
    answers = [turn["value"] + "</s>" for turn in sample["conversations"] if turn["from"] == "gpt"]
    runs = supervised_runs(batch["labels"][0].tolist())
    assert [processor.tokenizer.decode(run).strip() for run in runs] == answers


@pytest.mark.parametrize("caption", ["a red square on a white background", "3 blue circles", " a cat."])
def test_plain_ids_and_labels_equal_the_official_plain_mask(tokenizers_by_legacy, spm, caption):
    processor = make_processor(tokenizers_by_legacy[True])
    sample = {"id": "caption", "image": red_image(), "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": caption},
    ]}
    batch = CrocDataCollator(processor, conversation_format="plain")([sample])
    official_ids = official_image_token_ids(spm, "<image>" + caption + "\n", legacy=True)
    official_labels = official_plain_labels(spm, caption)
    assert batch["input_ids"][0].tolist() == expand_sentinels(official_ids, processor.image_token_id)
    assert batch["labels"][0].tolist() == expand_labels(official_ids, official_labels)


def test_collator_one_pass_option(tokenizers_by_legacy):
    tokenizer = tokenizers_by_legacy[False]
    processor = make_processor(tokenizer, tokenize_images_separately=False)
    sample = collator_sample(V1_SAMPLES[0])
    assert CrocDataCollator(processor).tokenize_images_separately is False
    batch = CrocDataCollator(processor)([sample])
    expanded_prompt = official_v1_prompt(sample["conversations"]).replace("<image>", "<image>" * NUM_IMAGE_TOKENS)
    assert batch["input_ids"][0].tolist() == tokenizer(expanded_prompt).input_ids
    chunked = CrocDataCollator(processor, tokenize_images_separately=True)([sample])
    assert chunked["input_ids"].shape[1] == batch["input_ids"].shape[1] + 1  # the "▁" after the image
