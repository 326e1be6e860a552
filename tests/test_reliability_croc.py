"""Broken inputs and files around the Croc model: clear errors, and properties of the comprehension mask."""

import os

import pytest
import torch
from conftest import image_prompt, random_pixels, tiny_croc_model
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_croc import CrocForConditionalGeneration
from modeling_croc.comprehension import comprehension_attention_allowed

# ---------------------------------------------------------------- mask properties


@st.composite
def mask_inputs(draw):
    """A batch of rows: random text/image layout, right or left padding, random supervised span."""
    batch = draw(st.integers(1, 3))
    seq_len = draw(st.integers(2, 24))
    image = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=seq_len, max_size=seq_len),
                                       min_size=batch, max_size=batch)))
    lengths = draw(st.lists(st.integers(1, seq_len), min_size=batch, max_size=batch))
    left = draw(st.booleans())
    padding = torch.zeros(batch, seq_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        if left:
            padding[row, seq_len - length :] = 1
        else:
            padding[row, :length] = 1
    supervised = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=seq_len, max_size=seq_len),
                                            min_size=batch, max_size=batch)))
    labels = torch.where(supervised & padding.bool() & ~image, 7, -100)
    image = image & padding.bool()
    return image, padding, labels


@settings(max_examples=80, deadline=None)
@given(mask_inputs(), st.sampled_from(["visual", "prefix"]))
def test_every_query_sees_itself_and_never_a_padding_key(inputs, scope):
    image, padding, labels = inputs
    allowed = comprehension_attention_allowed(image, padding, labels, scope)
    seq_len = image.shape[1]
    eye = torch.eye(seq_len, dtype=torch.bool)
    assert bool(allowed[:, eye].all())
    pad_keys = ~padding.bool().unsqueeze(1).expand_as(allowed) & ~eye
    assert not bool(allowed[pad_keys].any())


@settings(max_examples=80, deadline=None)
@given(mask_inputs())
def test_visual_scope_never_lets_text_see_a_later_token(inputs):
    image, padding, labels = inputs
    allowed = comprehension_attention_allowed(image, padding, labels, "visual")
    seq_len = image.shape[1]
    later = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(diagonal=1)
    text_queries = (~image).unsqueeze(2).expand_as(allowed)
    assert not bool(allowed[text_queries & later].any())
    # and an image token sees later tokens only inside its own image run
    image_queries = image.unsqueeze(2).expand_as(allowed)
    later_text_keys = (~image).unsqueeze(1).expand_as(allowed) & later
    assert not bool(allowed[image_queries & later_text_keys].any())


@settings(max_examples=60, deadline=None)
@given(mask_inputs())
def test_prefix_scope_is_causal_after_the_first_supervised_label(inputs):
    image, padding, labels = inputs
    allowed = comprehension_attention_allowed(image, padding, labels, "prefix")
    seq_len = image.shape[1]
    positions = torch.arange(seq_len)
    for row in range(image.shape[0]):
        supervised = (labels[row] != -100).nonzero()
        start = int(supervised[0]) if len(supervised) else seq_len
        later = positions.view(1, -1) > positions.view(-1, 1)
        beyond_prefix = later & (positions.view(1, -1) >= start)
        assert not bool(allowed[row][beyond_prefix].any())


# ---------------------------------------------------------------- inputs


def test_sequence_longer_than_the_positions_raises_with_both_numbers():
    model = tiny_croc_model()
    ids = torch.tensor([image_prompt(model.config, [5] * 240, [6])])
    with pytest.raises(ValueError, match=r"258 positions.*has 256"):
        model(input_ids=ids, pixel_values=random_pixels(model.config, 1))


def test_batch_size_mismatch_between_text_and_images_raises_with_both_numbers():
    model = tiny_croc_model()
    ids = torch.tensor([image_prompt(model.config, [5], [6])] * 2)
    with pytest.raises(ValueError, match=r"32 image tokens.*3 image\(s\) give 48 features"):
        model(input_ids=ids, pixel_values=random_pixels(model.config, 3))


def test_exactly_one_of_input_ids_and_inputs_embeds():
    model = tiny_croc_model()
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(input_ids=None)


# ---------------------------------------------------------------- files


def test_truncated_weights_file_is_named_in_the_error(tmp_path):
    tiny_croc_model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(OSError, match=r"model\.safetensors is corrupt or truncated"):
        CrocForConditionalGeneration.from_pretrained(tmp_path)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    tiny_croc_model().save_pretrained(tmp_path)
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(OSError, match=r"no file named model\.safetensors"):
        CrocForConditionalGeneration.from_pretrained(tmp_path)
