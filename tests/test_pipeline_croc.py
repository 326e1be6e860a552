"""Model and processor together: image-text-to-text pipeline, chat generation, Auto processor round trip."""

import PIL.Image
import torch
from conftest import OFFICIAL, tiny_croc_model
from transformers import AutoProcessor, AutoTokenizer, pipeline

from modeling_croc import CrocImageProcessor, CrocProcessor


def tiny_processor():
    """The bundled 320-token tokenizer with a 56 px image processor: 16 image tokens, like `tiny_croc_model`."""
    tokenizer = AutoTokenizer.from_pretrained(OFFICIAL / "tokenizer")
    image_processor = CrocImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    return CrocProcessor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_model_for(processor):
    model = tiny_croc_model(text={"vocab_size": len(processor.tokenizer) - 1})
    assert model.config.image_token_id == processor.image_token_id
    return model


def a_picture():
    return PIL.Image.new("RGB", (40, 30), (200, 30, 30))


def test_processor_output_drives_the_model_and_generation():
    processor = tiny_processor()
    model = tiny_model_for(processor)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[a_picture()], text=prompt, return_tensors="pt")
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == model.config.num_image_tokens
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    text = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert isinstance(text[0], str)


def test_left_padded_processor_batch_matches_single_generation():
    processor = tiny_processor()
    processor.tokenizer.padding_side = "left"
    model = tiny_model_for(processor)
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            add_generation_prompt=True,
        )
        for question in ("Describe the picture in detail please.", "Colour?")
    ]
    images = [a_picture(), PIL.Image.new("RGB", (20, 50), (10, 200, 10))]
    batch = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    batched = model.generate(**batch, max_new_tokens=4, do_sample=False)[:, batch["input_ids"].shape[1] :]
    for i in range(2):
        single = processor(images=[images[i]], text=prompts[i], return_tensors="pt")
        alone = model.generate(**single, max_new_tokens=4, do_sample=False)[:, single["input_ids"].shape[1] :]
        assert batched[i].tolist() == alone[0].tolist()


def test_image_text_to_text_pipeline_runs():
    processor = tiny_processor()
    model = tiny_model_for(processor)
    describe = pipeline("image-text-to-text", model=model, processor=processor)
    messages = [{"role": "user", "content": [{"type": "image", "image": a_picture()}, {"type": "text", "text": "Hi"}]}]
    result = describe(text=messages, max_new_tokens=3, return_full_text=False)
    assert isinstance(result[0]["generated_text"], str)


def test_processor_saves_and_loads_through_auto_processor(tmp_path):
    processor = tiny_processor()
    model = tiny_model_for(processor)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is CrocProcessor
    prompt = "USER: <image>\nHi ASSISTANT:"
    ours = processor(images=[a_picture()], text=prompt, return_tensors="pt")
    theirs = loaded(images=[a_picture()], text=prompt, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
