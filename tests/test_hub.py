# Copyright 2026 The modeling_croc authors. All rights reserved.
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
"""Hub push (everything up to the network call) and pull (with the package, and with remote code only)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import OFFICIAL, run_without_package, tiny_croc_model
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import EntryNotFoundError
from peft import get_peft_model
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from modeling_croc.hub_croc import CARD_MARKER, push_adapter_to_hub
from modeling_croc.peft_croc import croc_lora_config

CROC_CODE_FILES = {"configuration_croc.py", "modeling_croc.py", "hub_croc.py", "comprehension.py"}


class FakeHub:
    """Stands in for the Hub: records what `create_commit` / `upload_folder` would upload, and serves a README."""

    def __init__(self, monkeypatch):
        self.files: dict[str, bytes] = {}
        self.repos: list[str] = []
        self.remote_readme: str | None = None
        hub = self
        real_load = ModelCard.load.__func__

        def create_repo(api, repo_id, **kwargs):
            hub.repos.append(repo_id)
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def create_commit(api, repo_id, operations, **kwargs):
            for operation in operations:
                source = operation.path_or_fileobj
                hub.files[operation.path_in_repo] = Path(source).read_bytes() if isinstance(source, str) else source
            return f"https://huggingface.co/{repo_id}/commit/0"

        def upload_folder(api, repo_id, folder_path, **kwargs):
            for path in Path(folder_path).rglob("*"):
                if path.is_file():
                    hub.files[path.relative_to(folder_path).as_posix()] = path.read_bytes()
            return f"https://huggingface.co/{repo_id}/commit/0"

        def load_card(cls, repo_id_or_path, *args, **kwargs):
            if Path(repo_id_or_path).exists():
                return real_load(cls, repo_id_or_path, *args, **kwargs)
            if hub.remote_readme is None:
                raise EntryNotFoundError(f"{repo_id_or_path} has no README.md")
            return cls(hub.remote_readme)

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        monkeypatch.setattr(HfApi, "create_branch", lambda api, **kwargs: None)
        monkeypatch.setattr(ModelCard, "load", classmethod(load_card))

    def json(self, name: str) -> dict:
        return json.loads(self.files[name])

    def card(self) -> ModelCard:
        return ModelCard(self.files["README.md"].decode())


@pytest.fixture
def fake_hub(monkeypatch):
    return FakeHub(monkeypatch)


# ---------------------------------------------------------------------------------------------------- push


def test_model_push_to_hub_uploads_weights_config_code_and_a_card(fake_hub):
    model = tiny_croc_model()
    model.push_to_hub("me/croc-tiny", base_model="DeepGlint-AI/LLaVA-v1.5-Croc-7b")
    assert fake_hub.repos == ["me/croc-tiny"]
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md"} <= set(fake_hub.files)
    assert CROC_CODE_FILES <= set(fake_hub.files)
    auto_map = fake_hub.json("config.json")["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_croc.CrocConfig"
    assert auto_map["AutoModelForImageTextToText"] == "modeling_croc.CrocForConditionalGeneration"
    card = fake_hub.card()
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "image-text-to-text"
    assert card.data.base_model == "DeepGlint-AI/LLaVA-v1.5-Croc-7b"
    assert "croc" in card.data.tags and CARD_MARKER in card.text
    assert 'from_pretrained("me/croc-tiny", trust_remote_code=True)' in card.text


def test_base_model_defaults_to_the_hub_id_the_model_came_from(fake_hub):
    model = tiny_croc_model()
    model.name_or_path = "DeepGlint-AI/croc-7b-hf"
    model.push_to_hub("me/croc-tuned")
    assert fake_hub.card().data.base_model == "DeepGlint-AI/croc-7b-hf"


def test_save_pretrained_with_push_to_hub_writes_and_uploads_the_card(fake_hub, tmp_path):
    (tmp_path / "croc-local").mkdir()
    (tmp_path / "croc-local" / "notes.txt").write_text("an unrelated file the save did not write")
    tiny_croc_model().save_pretrained(tmp_path / "croc-local", push_to_hub=True, repo_id="me/croc-local")
    assert "notes.txt" not in fake_hub.files
    assert fake_hub.repos == ["me/croc-local"]
    assert (tmp_path / "croc-local" / "README.md").read_bytes() == fake_hub.files["README.md"]
    assert fake_hub.card().data.pipeline_tag == "image-text-to-text"
    assert "model.safetensors" in fake_hub.files


def test_a_card_written_by_a_person_is_kept_and_placeholders_are_replaced(fake_hub):
    model = tiny_croc_model()
    fake_hub.remote_readme = "---\nlicense: mit\n---\n# My own careful card\n"
    model.push_to_hub("me/croc-kept")
    assert "README.md" not in fake_hub.files and "model.safetensors" in fake_hub.files
    fake_hub.remote_readme = (
        "---\nlibrary_name: transformers\n---\nThis is the model card of a 🤗 transformers model that has been "
        "pushed on the Hub. This model card has been automatically generated.\n"
    )
    model.push_to_hub("me/croc-placeholder")
    assert CARD_MARKER in fake_hub.card().text


def test_xformer_push_to_hub_writes_an_xformer_card(fake_hub):
    from test_xformer_helpers import tiny_config

    from modeling_croc import XFormerForConditionalGeneration, XFormerModel

    XFormerForConditionalGeneration(tiny_config()).push_to_hub("me/xformer-stage2")
    card = fake_hub.card()
    assert "X-Former" in card.text and card.data.pipeline_tag == "image-text-to-text"
    assert card.data.library_name == "transformers"
    assert {"modeling_xformer.py", "configuration_xformer.py", "hub_croc.py"} <= set(fake_hub.files)
    assert "AutoModelForImageTextToText" in fake_hub.json("config.json")["auto_map"]
    fake_hub.files.clear()
    XFormerModel(tiny_config(with_text=False)).push_to_hub("me/xformer-stage1")
    assert fake_hub.card().data.pipeline_tag is None  # stage 1 does not generate text


def test_adapter_push_uploads_the_adapter_with_a_peft_card(fake_hub):
    peft_model = get_peft_model(tiny_croc_model(), croc_lora_config(r=4))
    push_adapter_to_hub(peft_model, "me/croc-lora", base_model="me/croc-tiny", notes="- data: shapes")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(fake_hub.files)
    assert "model.safetensors" not in fake_hub.files
    assert fake_hub.json("adapter_config.json")["base_model_name_or_path"] == "me/croc-tiny"
    card = fake_hub.card()
    assert card.data.library_name == "peft"
    assert card.data.base_model == "me/croc-tiny"
    assert card.data.pipeline_tag == "image-text-to-text"
    assert not any(str(tag).startswith("base_model:") for tag in card.data.tags)
    assert 'PeftModel.from_pretrained(base, "me/croc-lora")' in card.text and "- data: shapes" in card.text


@pytest.fixture(scope="module")
def converted_and_pushed(tmp_path_factory):
    """The official tiny checkpoint converted with `push_to_hub=` set, and the files the upload would carry."""
    from conversion.convert_croc_to_hf import convert_croc_checkpoint

    with pytest.MonkeyPatch.context() as monkeypatch:
        fake_hub = FakeHub(monkeypatch)
        folder = convert_croc_checkpoint(
            checkpoint=OFFICIAL / "croc",
            vision_tower=OFFICIAL / "clip",
            tokenizer=OFFICIAL / "tokenizer",
            output=tmp_path_factory.mktemp("hub") / "croc-tiny",
            push_to_hub="me/croc-tiny-hf",
            verify=False,
        )
    return Path(folder), fake_hub


def test_converter_push_uploads_weights_processor_code_and_card(converted_and_pushed):
    _, fake_hub = converted_and_pushed
    files = set(fake_hub.files)
    assert fake_hub.repos == ["me/croc-tiny-hf"]
    assert any(name.endswith(".safetensors") for name in files)
    assert {"config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    assert CROC_CODE_FILES | {"processing_croc.py", "image_processing_croc.py"} <= files
    assert "AutoModelForImageTextToText" in fake_hub.json("config.json")["auto_map"]
    card = fake_hub.card()
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-text-to-text"
    assert card.data.base_model


def test_processor_push_to_hub_carries_the_processor_files(converted_and_pushed, fake_hub):
    folder, _ = converted_and_pushed
    AutoProcessor.from_pretrained(folder).push_to_hub("me/croc-tiny-hf")
    assert {"processor_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(fake_hub.files)
    assert "processing_croc.py" in fake_hub.files


# ---------------------------------------------------------------------------------------------------- pull


def test_auto_classes_load_the_same_with_the_package_and_with_remote_code_only(converted_and_pushed, tmp_path):
    folder, _ = converted_and_pushed
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert type(model).__module__ == "modeling_croc.modeling_croc"
    assert type(processor).__module__ == "modeling_croc.processing_croc"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.open(OFFICIAL / "image.png"), text=prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.save({"prompt": prompt, "logits": logits, **inputs}, tmp_path / "expected.pt")

    script = f"""
        import torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        folder = {str(folder)!r}
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is this?"}}]}}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        assert prompt == expected["prompt"], prompt
        inputs = processor(images=Image.open({str(OFFICIAL / "image.png")!r}), text=prompt, return_tensors="pt")
        assert torch.equal(inputs["input_ids"], expected["input_ids"])
        assert torch.equal(inputs["pixel_values"], expected["pixel_values"])
        with torch.no_grad():
            logits = model(**inputs).logits
        torch.testing.assert_close(logits, expected["logits"], atol=1e-6, rtol=1e-6)
        print("REMOTE-OK")
        """
    result = run_without_package(script, tmp_path, timeout=600)
    assert "REMOTE-OK" in result.stdout, result.stderr[-3000:]
