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
"""Tests for CrocProcessor, the vicuna_v1 chat template, add_image_token and the tiny tokenizer fixture."""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util
import json
from pathlib import Path

import PIL.Image
import pytest
import torch
from transformers import AutoTokenizer, LlamaTokenizer

from modeling_croc.image_processing_croc import CrocImageProcessor
from modeling_croc.processing_croc import CROC_CHAT_TEMPLATE, VICUNA_V1_SYSTEM_PROMPT, CrocProcessor, add_image_token


FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOKENIZER_DIR = FIXTURES / "croc-tiny-official" / "tokenizer"
SYSTEM = VICUNA_V1_SYSTEM_PROMPT


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def processor(tokenizer):
    return CrocProcessor(image_processor=CrocImageProcessor(), tokenizer=tokenizer)


@pytest.fixture(scope="module")
def small_processor(tokenizer):
    """56-px crops and 14-px patches: (56 // 14) ** 2 = 16 image tokens, fast to check exhaustively."""
    image_processor = CrocImageProcessor(size={"shortest_edge": 56}, crop_size=56)
    return CrocProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14)


def red_image(width=40, height=30):
    return PIL.Image.new("RGB", (width, height), (255, 0, 0))


def load_make_tiny_tokenizer():
    spec = importlib.util.spec_from_file_location("make_tiny_tokenizer", FIXTURES / "make_tiny_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -------------------------------------------------------------------------------------------- tiny tokenizer


def test_tiny_tokenizer_layout_matches_the_checkpoint(tokenizer):
    generation_config = json.loads((FIXTURES / "croc-tiny-official" / "croc" / "generation_config.json").read_text())
    model_config = json.loads((FIXTURES / "croc-tiny-official" / "croc" / "config.json").read_text())
    assert len(tokenizer) == model_config["vocab_size"] + 1
    assert tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2]
    assert tokenizer.bos_token_id == generation_config["bos_token_id"] == 1
    assert tokenizer.eos_token_id == generation_config["eos_token_id"] == 2
    assert tokenizer.pad_token_id == generation_config["pad_token_id"] == 0
    assert tokenizer.pad_token == tokenizer.unk_token == "<unk>"
    assert tokenizer.padding_side == "right"
    assert tokenizer.convert_tokens_to_ids("<image>") == 320


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "Describe the image in detail, please: what colour is the zebra? It's 42 km away!",
        "Two  spaces,\ttabs and\nnew lines; unicode: café, naïve, 東京.",
    ],
)
def test_tiny_tokenizer_round_trips_text(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tiny_tokenizer_fixture_is_reproducible(tokenizer):
    rebuilt = load_make_tiny_tokenizer().build_tokenizer()
    assert rebuilt.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_add_image_token_is_idempotent():
    module = load_make_tiny_tokenizer()
    pieces, merges = module.train_pieces()
    fresh = LlamaTokenizer(vocab=module.build_vocab(pieces), merges=merges, pad_token="<unk>", padding_side="right")
    assert len(fresh) == 320 and "<image>" not in fresh.get_vocab()
    with pytest.raises(ValueError, match="add_image_token"):
        CrocProcessor(image_processor=CrocImageProcessor(), tokenizer=fresh)
    assert add_image_token(fresh) == 320
    assert add_image_token(fresh) == 320
    assert len(fresh) == 321
    ids = fresh("a <image>b", add_special_tokens=False).input_ids
    assert ids.count(320) == 1
    assert "<image>" not in fresh.decode(ids, skip_special_tokens=True)


# ------------------------------------------------------------------------------------------ token expansion


def test_default_expansion_is_576_image_tokens(processor):
    output = processor(text="USER: <image>\nWhat is it?", images=red_image(), return_tensors="pt")
    assert (output["input_ids"] == processor.image_token_id).sum().item() == 576
    assert output["pixel_values"].shape == (1, 3, 336, 336)
    assert processor.image_token == "<image>" and processor.image_token_id == 320


def test_expansion_follows_patch_size_and_crop(small_processor, tokenizer):
    output = small_processor(text="<image> hi", images=red_image(), return_tensors="pt")
    assert (output["input_ids"] == 320).sum().item() == 16
    full = CrocProcessor(small_processor.image_processor, tokenizer, vision_feature_select_strategy="full")
    assert (full(text="<image>", images=red_image())["input_ids"][0]).count(320) == 17
    no_cls = CrocProcessor(small_processor.image_processor, tokenizer, num_additional_image_tokens=0)
    assert no_cls.num_image_tokens(56, 56) == 15
    assert small_processor._get_num_multimodal_tokens([[30, 40], [500, 20]]).num_image_tokens == [16, 16]


def test_num_multimodal_tokens_without_centre_crop(tokenizer):
    image_processor = CrocImageProcessor(size={"shortest_edge": 56}, do_center_crop=False)
    processor = CrocProcessor(image_processor, tokenizer)
    assert processor._get_num_multimodal_tokens([[30, 40]]).num_image_tokens == [16]
    square = processor._get_num_multimodal_tokens([[28, 56]], image_aspect_ratio="square")
    assert square.num_image_tokens == [(56 // 14) * (112 // 14)]
    output = processor(text="<image>", images=red_image(56, 28), image_aspect_ratio="square")
    assert output["input_ids"][0].count(320) == 32


def test_multiple_images_and_batches(small_processor):
    output = small_processor(
        text=["<image> one <image> two", "<image> three"],
        images=[[red_image(), red_image(10, 50)], [red_image()]],
        padding=True,
        return_tensors="pt",
    )
    assert (output["input_ids"] == 320).sum(dim=1).tolist() == [32, 16]
    assert output["pixel_values"].shape == (3, 3, 56, 56)


def test_text_only(processor):
    output = processor(text="USER: hello ASSISTANT:", return_tensors="pt")
    assert "pixel_values" not in output and (output["input_ids"] == 320).sum() == 0


@pytest.mark.parametrize(
    ("text", "num_images", "message"),
    [
        ("<image> <image>", 1, "contains 2 <image> placeholder.* but 1 image"),
        ("no placeholder", 1, "contains 0 <image> placeholder.* but 1 image"),
        ("<image>", 0, "contains 1 <image> placeholder.* but 0 image"),
        (["<image>", "<image>"], 3, "contains 2 <image> placeholder.* but 3 image"),
    ],
)
def test_placeholder_image_mismatch_names_both_numbers(small_processor, text, num_images, message):
    images = [red_image() for _ in range(num_images)] or None
    with pytest.raises(ValueError, match=message):
        small_processor(text=text, images=images)


def test_truncation_never_cuts_an_image(small_processor, processor):
    prompt = "A long preamble before the picture. USER: <image>\nWhat is it?"
    with pytest.raises(ValueError, match="need 576 image tokens but only .* remain"):
        processor(text=prompt, images=red_image(), truncation=True, max_length=30)
    with pytest.raises(ValueError, match="need 16 image tokens but only 0 remain"):
        small_processor(text=prompt, images=red_image(), truncation=True, max_length=5)
    ids_before_image = small_processor(text=prompt.split("<image>")[0])["input_ids"][0]
    # Cutting text after a complete image run is fine.
    output = small_processor(text=prompt, images=red_image(), truncation=True, max_length=len(ids_before_image) + 17)
    assert output["input_ids"][0].count(320) == 16 and len(output["input_ids"][0]) == len(ids_before_image) + 17


def test_decode_and_batch_decode(processor, tokenizer):
    ids = processor(text=["USER: hi ASSISTANT: A red square.</s>"])["input_ids"]
    assert processor.batch_decode(ids, skip_special_tokens=True) == ["USER: hi ASSISTANT: A red square."]
    assert processor.decode(ids[0]) == "<s> USER: hi ASSISTANT: A red square.</s>"


# ------------------------------------------------------------------------------------------- chat template

USER_IMAGE_TURN = {
    "role": "user",
    "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}],
}
ASSISTANT_TURN = {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]}
SECOND_USER_TURN = {"role": "user", "content": [{"type": "text", "text": "What colour is it?"}]}
SECOND_ASSISTANT_TURN = {"role": "assistant", "content": "Red."}


def test_single_turn_generation_prompt(processor):
    prompt = processor.apply_chat_template([USER_IMAGE_TURN], add_generation_prompt=True)
    assert prompt == f"{SYSTEM} USER: <image>\nWhat is in the image? ASSISTANT:"


def test_single_turn_without_generation_prompt(processor):
    assert processor.apply_chat_template([USER_IMAGE_TURN]) == f"{SYSTEM} USER: <image>\nWhat is in the image? "
    conversation = [USER_IMAGE_TURN, ASSISTANT_TURN]
    expected = f"{SYSTEM} USER: <image>\nWhat is in the image? ASSISTANT: A red square.</s>"
    assert processor.apply_chat_template(conversation) == expected


def test_multi_turn(processor):
    conversation = [USER_IMAGE_TURN, ASSISTANT_TURN, SECOND_USER_TURN, SECOND_ASSISTANT_TURN]
    expected = (
        f"{SYSTEM} USER: <image>\nWhat is in the image? ASSISTANT: A red square.</s>"
        "USER: What colour is it? ASSISTANT: Red.</s>"
    )
    assert processor.apply_chat_template(conversation) == expected
    with_prompt = processor.apply_chat_template(conversation[:3], add_generation_prompt=True)
    assert with_prompt == expected[: expected.index("Red.")].rstrip()
    assert with_prompt.endswith("USER: What colour is it? ASSISTANT:")


def test_system_message_replaces_default(processor):
    conversation = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, SECOND_USER_TURN]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == "Be brief. USER: What colour is it? ASSISTANT:"


def test_image_placeholder_moves_to_the_start(processor):
    image_after_text = {"role": "user", "content": [{"type": "text", "text": " Describe it. "}, {"type": "image"}]}
    prompt = processor.apply_chat_template([image_after_text], add_generation_prompt=True)
    assert prompt == f"{SYSTEM} USER: <image>\nDescribe it. ASSISTANT:"
    llava_style = {"role": "user", "content": "Describe <image> it.\n"}
    prompt = processor.apply_chat_template([llava_style], add_generation_prompt=True)
    assert prompt == f"{SYSTEM} USER: <image>\nDescribe  it. ASSISTANT:"
    image_only = {"role": "user", "content": [{"type": "image"}]}
    prompt = processor.apply_chat_template([image_only], add_generation_prompt=True)
    assert prompt == f"{SYSTEM} USER: <image> ASSISTANT:"  # the official `.strip()` drops the lone "\n"


def test_roles_must_alternate(processor):
    with pytest.raises(Exception, match="alternate"):
        processor.apply_chat_template([USER_IMAGE_TURN, SECOND_USER_TURN])
    with pytest.raises(Exception, match="alternate"):
        processor.apply_chat_template([ASSISTANT_TURN])


def test_tokenizer_and_processor_share_the_template(processor, tokenizer):
    conversation = [SECOND_USER_TURN, SECOND_ASSISTANT_TURN]
    assert tokenizer.chat_template == CROC_CHAT_TEMPLATE == processor.chat_template
    assert tokenizer.apply_chat_template(conversation, tokenize=False) == processor.apply_chat_template(conversation)


def test_apply_chat_template_tokenized_with_images(processor):
    image = red_image()
    output = processor.apply_chat_template(
        [USER_IMAGE_TURN], add_generation_prompt=True, tokenize=True, return_dict=True, images=[image],
        return_tensors="pt",
    )
    prompt = processor.apply_chat_template([USER_IMAGE_TURN], add_generation_prompt=True)
    expected = processor(text=prompt, images=image, return_tensors="pt")
    torch.testing.assert_close(output["input_ids"], expected["input_ids"])
    torch.testing.assert_close(output["pixel_values"], expected["pixel_values"])
    assert output["input_ids"][0, 0].item() == processor.tokenizer.bos_token_id
    assert (output["input_ids"] == 320).sum().item() == 576


def test_assistant_mask_marks_answer_and_eos(processor):
    conversation = [SECOND_USER_TURN, SECOND_ASSISTANT_TURN, SECOND_USER_TURN, ASSISTANT_TURN]
    output = processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = output["input_ids"][0]
    supervised = [token for token, flag in zip(ids, output["assistant_masks"][0]) if flag]
    assert processor.decode(supervised) == "Red.</s> A red square.</s>"


def test_assistant_mask_with_an_image_in_both_tokenization_modes(small_processor, tokenizer):
    conversation = [USER_IMAGE_TURN, ASSISTANT_TURN, SECOND_USER_TURN, SECOND_ASSISTANT_TURN]
    for separately in (True, False):
        processor = CrocProcessor(small_processor.image_processor, tokenizer, tokenize_images_separately=separately)
        output = processor.apply_chat_template(
            conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, images=[red_image()]
        )
        ids = output["input_ids"][0]
        supervised = [token for token, flag in zip(ids, output["assistant_masks"][0]) if flag]
        assert processor.decode(supervised) == "A red square.</s>Red.</s>"


def test_chunked_tokenization_differs_from_one_pass_only_after_images(small_processor, tokenizer):
    one_pass = CrocProcessor(small_processor.image_processor, tokenizer, tokenize_images_separately=False)
    prompt = "USER: <image>\nWhat is it? ASSISTANT:"
    chunked_output = small_processor(text=prompt, images=red_image(), return_offsets_mapping=True)
    one_pass_output = one_pass(text=prompt, images=red_image(), return_offsets_mapping=True)
    chunked, single = chunked_output["input_ids"][0], one_pass_output["input_ids"][0]
    image_end = chunked.index(320) + 16
    assert chunked[:image_end] == single[:image_end]
    assert tokenizer.convert_ids_to_tokens(chunked[image_end : image_end + 2]) == ["▁", "<0x0A>"]
    assert chunked[image_end + 1 :] == single[image_end:]
    # Offsets index the image-expanded prompt in both modes; the chunk's "▁" shares the "\n"'s offsets.
    chunked_offsets = chunked_output["offset_mapping"][0]
    assert chunked_offsets[:image_end] == one_pass_output["offset_mapping"][0][:image_end]
    newline_offsets = one_pass_output["offset_mapping"][0][image_end]
    assert chunked_offsets[image_end] == chunked_offsets[image_end + 1] == newline_offsets
    text_only = "USER: hi ASSISTANT: A red square.</s>USER: ok"
    assert small_processor(text=text_only)["input_ids"] == one_pass(text=text_only)["input_ids"]


def test_chunked_tokenization_pads_and_truncates_like_a_tokenizer_call(small_processor, tokenizer):
    texts = ["<image> hi", "USER: <image>\nWhat is in the image? ASSISTANT:"]
    images = [red_image(), red_image()]
    batch = small_processor(text=texts, images=images, padding="max_length", max_length=64, padding_side="left")
    singles = [small_processor(text=text, images=image)["input_ids"][0] for text, image in zip(texts, images)]
    for row, mask, single in zip(batch["input_ids"], batch["attention_mask"], singles):
        num_padding = 64 - len(single)
        assert len(row) == 64 and row[num_padding:] == single and mask == [0] * num_padding + [1] * len(single)
    multiple = small_processor(text=texts, images=images, padding=True, pad_to_multiple_of=8)
    assert len(multiple["input_ids"][0]) % 8 == 0
    cut = small_processor(text=texts[1], images=images[1], truncation=True, max_length=len(singles[1]) - 3)
    assert cut["input_ids"][0] == singles[1][:-3]
    with pytest.raises(ValueError, match="tokenize_images_separately=False"):
        small_processor(text=texts[0], images=images[0], return_overflowing_tokens=True)


def test_left_padded_batch_for_generation(small_processor):
    conversations = [
        [USER_IMAGE_TURN],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
    ]
    output = small_processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True,
        images=[[red_image()], [red_image(20, 20)]], padding=True, padding_side="left", return_tensors="pt",
    )
    input_ids, attention_mask = output["input_ids"], output["attention_mask"]
    assert input_ids.shape[0] == 2 and attention_mask[:, -1].all()
    assert attention_mask[1, 0] == 0 and input_ids[1, 0] == small_processor.tokenizer.pad_token_id
    assert input_ids[0, -1] == input_ids[1, -1]  # both end on "ASSISTANT:"
    first_real = attention_mask[1].tolist().index(1)
    assert input_ids[1, first_real] == small_processor.tokenizer.bos_token_id
    assert (input_ids == 320).sum(dim=1).tolist() == [16, 16]
    # The chunk after the image starts with the SentencePiece prefix "▁" (official ids), decoded as a space.
    assert small_processor.batch_decode(input_ids, skip_special_tokens=True)[1].endswith("USER:  \nHi ASSISTANT:")


# --------------------------------------------------------------------------------------------- save / load


def test_save_and_load_round_trip(tmp_path, tokenizer):
    image_processor = CrocImageProcessor(size={"shortest_edge": 56}, crop_size=56, image_aspect_ratio="square")
    processor = CrocProcessor(
        image_processor, tokenizer, patch_size=28, vision_feature_select_strategy="full",
        tokenize_images_separately=False,
    )
    processor.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["patch_size"] == 28 and saved["vision_feature_select_strategy"] == "full"
    assert saved["tokenize_images_separately"] is False
    assert saved["num_additional_image_tokens"] == 1 and saved["image_token"] == "<image>"
    assert saved["image_processor"]["image_aspect_ratio"] == "square"
    assert (tmp_path / "chat_template.jinja").read_text() == CROC_CHAT_TEMPLATE

    reloaded = CrocProcessor.from_pretrained(str(tmp_path))
    assert isinstance(reloaded.image_processor, CrocImageProcessor)
    assert reloaded.image_processor.image_aspect_ratio == "square"
    assert (reloaded.patch_size, reloaded.vision_feature_select_strategy) == (28, "full")
    assert reloaded.tokenize_images_separately is False
    assert CrocProcessor(image_processor, tokenizer).tokenize_images_separately is True
    assert reloaded.image_token_id == 320 and reloaded.chat_template == CROC_CHAT_TEMPLATE
    assert reloaded.tokenizer.padding_side == "right"
    inputs = {"text": "USER: <image>\nhi", "images": red_image(), "return_tensors": "pt"}
    expected, actual = processor(**inputs), reloaded(**inputs)
    assert actual["input_ids"][0].tolist().count(320) == 5
    torch.testing.assert_close(actual["input_ids"], expected["input_ids"])
    torch.testing.assert_close(actual["pixel_values"], expected["pixel_values"])


def test_remote_code_modules_import_only_allowed_packages():
    """image_processing_croc.py / processing_croc.py are copied into Hub repos for `trust_remote_code`."""
    import ast
    import sys

    allowed = {"transformers", "torch", "numpy", "PIL"} | set(sys.stdlib_module_names)
    for name in ("image_processing_croc.py", "processing_croc.py"):
        tree = ast.parse((Path(__file__).resolve().parents[1] / "modeling_croc" / name).read_text())
        for node in tree.body:
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = set() if node.level > 0 else {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{name} imports {roots - allowed}"
