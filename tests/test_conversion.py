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
"""Tests of `conversion/convert_croc_to_hf.py` against the official tiny reference, in every checkpoint layout."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from transformers import AutoImageProcessor, AutoModelForImageTextToText  # noqa: E402

import modeling_croc  # noqa: E402, F401  (registers Croc with the Auto classes)
from conversion import convert_croc_to_hf as converter  # noqa: E402

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "croc-tiny-official"
OFFICIAL = FIXTURE / "croc"
CLIP = FIXTURE / "clip"
TOKENIZER = FIXTURE / "tokenizer"
SCRIPT = REPO_ROOT / "conversion" / "convert_croc_to_hf.py"
OFFICIAL_IMAGE_PLACEHOLDER = -200
IMAGE_TOKEN_ID = 320  # the tiny text vocabulary size
NUM_IMAGE_TOKENS = 576


# ------------------------------------------------------------------------------------------------------------ helpers


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


def expand_image_placeholder(input_ids: torch.Tensor, image_token_id: int = IMAGE_TOKEN_ID) -> torch.Tensor:
    """The official single -200 placeholder -> 576 copies of the image token id (the transformers layout)."""
    rows = []
    for row in input_ids:
        position = int((row == OFFICIAL_IMAGE_PLACEHOLDER).nonzero()[0, 0])
        image = torch.full((NUM_IMAGE_TOKENS,), image_token_id, dtype=row.dtype)
        rows.append(torch.cat([row[:position], image, row[position + 1 :]]))
    return torch.stack(rows)


def logits_of(folder: Path, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits of the converted folder, after checking it loads with no missing, unexpected or mismatched keys."""
    model, info = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids, pixel_values=pixel_values).logits


def max_reference_error(folder: Path) -> float:
    reference = torch.load(FIXTURE / "reference.pt", weights_only=True)
    logits = logits_of(folder, expand_image_placeholder(reference["input_ids"]), reference["pixel_values"])
    assert logits.shape == reference["logits"].shape
    return float((logits - reference["logits"]).abs().max())


def official_state_dict() -> dict[str, torch.Tensor]:
    return dict(torch.load(OFFICIAL / "pytorch_model.bin", weights_only=True))


def split_keys(keys: list[str], parts: int) -> list[list[str]]:
    size = -(-len(keys) // parts)
    return [keys[start : start + size] for start in range(0, len(keys), size)]


def write_official_checkpoint(
    folder: Path, state_dict: dict, layout: str, config: dict | None = None, parts: int = 3
) -> Path:
    """Save `state_dict` as an official release may: `bin`, `bin-sharded`, `safetensors` or `safetensors-sharded`."""
    folder.mkdir(parents=True)
    official_config = json.loads((OFFICIAL / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**official_config, **(config or {})}))
    shutil.copy(OFFICIAL / "generation_config.json", folder / "generation_config.json")
    tensors = {key: tensor.contiguous().clone() for key, tensor in state_dict.items()}
    use_safetensors = layout.startswith("safetensors")
    if not layout.endswith("sharded"):
        if use_safetensors:
            save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        else:
            torch.save(tensors, folder / "pytorch_model.bin")
        return folder
    groups = split_keys(list(tensors), parts)
    weight_map = {}
    for index, keys in enumerate(groups):
        suffix = "safetensors" if use_safetensors else "bin"
        stem = "model" if use_safetensors else "pytorch_model"
        name = f"{stem}-{index + 1:05d}-of-{len(groups):05d}.{suffix}"
        shard = {key: tensors[key] for key in keys}
        if use_safetensors:
            save_file(shard, folder / name, metadata={"format": "pt"})
        else:
            torch.save(shard, folder / name)
        weight_map.update(dict.fromkeys(keys, name))
    index_name = "model.safetensors.index.json" if use_safetensors else "pytorch_model.bin.index.json"
    (folder / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def convert_with_main(capsys, *args: str) -> tuple[int, str]:
    """Run the command line in-process; return its exit code and stderr."""
    code = converter.main(list(args))
    return code, capsys.readouterr().err


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in stderr


def leftovers(parent: Path, name: str) -> list[Path]:
    return sorted(
        path
        for path in parent.iterdir()
        if path.name.startswith(f"{name}.tmp-") or path.name.startswith(f"{name}.old-")
    )


# ----------------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def converted_by_cli(tmp_path_factory) -> Path:
    """The official tiny checkpoint converted by the command line, with the tiny tokenizer."""
    work = tmp_path_factory.mktemp("cli").absolute()
    output = work / "croc-tiny-hf"
    args = ["--checkpoint", str(OFFICIAL), "--vision-tower", str(CLIP), "--output", str(output)]
    args += ["--tokenizer", str(TOKENIZER)]
    result = run_script(*args, "--max-shard-size", "500KB", cwd=work)
    assert result.returncode == 0, result.stderr
    return output


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    return official_state_dict()


# ------------------------------------------------------------------------------------------------------------ mapping


def test_mapping_table():
    assert converter.convert_state_dict_key("model.mask_token") == "model.prompt_pool"
    assert (
        converter.convert_state_dict_key("model.mm_projector.0.weight")
        == "model.multi_modal_projector.linear_1.weight"
    )
    assert converter.convert_state_dict_key("model.mm_projector.2.bias") == "model.multi_modal_projector.linear_2.bias"
    assert (
        converter.convert_state_dict_key("model.layers.3.mlp.up_proj.weight")
        == "model.language_model.layers.3.mlp.up_proj.weight"
    )
    assert converter.convert_state_dict_key("model.embed_tokens.weight") == "model.language_model.embed_tokens.weight"
    assert converter.convert_state_dict_key("model.norm.weight") == "model.language_model.norm.weight"
    assert converter.convert_state_dict_key("lm_head.weight") == "lm_head.weight"
    assert (
        converter.convert_state_dict_key("transform_block.layers.0.attention.output.LayerNorm.bias")
        == "reconstruction_head.layer.attention.output.LayerNorm.bias"
    )
    assert converter.convert_state_dict_key("transform_block.resize.weight") == "reconstruction_head.out_proj.weight"
    assert (
        converter.convert_state_dict_key("transform_block.position_embeddings.weight")
        == "reconstruction_head.position_embeddings.weight"
    )
    for dropped in (
        "model.cross_attention.query.weight",
        "model.layers.0.self_attn.rotary_emb.inv_freq",
        "model.vision_tower.vision_tower.vision_model.pre_layrnorm.weight",
    ):
        assert converter.convert_state_dict_key(dropped) is None
    assert converter.convert_vision_tower_key("vision_model.encoder.layers.0.mlp.fc1.weight") == (
        "model.vision_tower.encoder.layers.0.mlp.fc1.weight"
    )
    assert converter.convert_vision_tower_key("post_layernorm.bias") == "model.vision_tower.post_layernorm.bias"
    assert converter.convert_vision_tower_key("text_model.embeddings.token_embedding.weight") is None
    with pytest.raises(converter.UnknownKeyError):
        converter.convert_state_dict_key("transform_block.layers.1.output.dense.weight")


def test_convert_state_dict_is_pure_and_shape_checked(state_dict):
    from safetensors.torch import load_file

    clip = load_file(CLIP / "model.safetensors")
    config = json.loads((OFFICIAL / "config.json").read_text())
    tensors = {key: converter.TensorInfo(key, Path("x"), tuple(t.shape), t.dtype) for key, t in state_dict.items()}
    croc_config = converter.build_croc_config(config, converter.build_vision_config(CLIP), tensors, torch.float32)
    expected = converter.expected_state_dict_shapes(croc_config)
    converted = converter.convert_state_dict(state_dict, expected, clip)
    assert set(converted) == set(expected)
    assert converted["model.prompt_pool"] is state_dict["model.mask_token"]
    bad = dict(state_dict, **{"model.mm_projector.0.weight": state_dict["model.mm_projector.0.weight"].T})
    with pytest.raises(converter.ConversionError, match="wrong tensor shape"):
        converter.convert_state_dict(bad, expected, clip)


def test_hub_ids_download_one_weight_format(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import HfApi

    calls = []
    files = [
        "config.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "training_args.bin",
    ]
    monkeypatch.setattr(converter, "hub_is_offline", lambda: False)
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo_id, **kwargs: files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kwargs: calls.append(kwargs) or str(OFFICIAL))
    assert converter.resolve_source("someone/croc-7b", "checkpoint") == OFFICIAL
    assert calls[0]["repo_id"] == "someone/croc-7b"
    assert "pytorch_model*.bin" in calls[0]["allow_patterns"] and "*.bin" not in calls[0]["allow_patterns"]
    with pytest.raises(converter.ConversionError, match="does not exist"):
        converter.resolve_source(str(tmp_path / "missing"), "checkpoint")


def test_shard_sizes():
    assert converter.parse_size("5GB") == 5 * 10**9
    assert converter.parse_size("2GiB") == 2 * 2**30
    assert converter.parse_size("300KB") == 300_000
    with pytest.raises(converter.ConversionError, match="shard size"):
        converter.parse_size("lots")


# --------------------------------------------------------------------------------------------- the official reference


def test_cli_conversion_reproduces_official_logits(converted_by_cli):
    assert max_reference_error(converted_by_cli) <= 1e-4


def test_image_processor_from_output_reproduces_official_pixels(converted_by_cli):
    image_processor = AutoImageProcessor.from_pretrained(converted_by_cli, trust_remote_code=True)
    expected = torch.load(FIXTURE / "reference_image_processing.pt", weights_only=True)
    expected = expected["pixel_values"] if isinstance(expected, dict) else expected
    pixel_values = image_processor(Image.open(FIXTURE / "image.png"), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == expected.shape
    assert float((pixel_values - expected).abs().max()) <= 1e-3


def test_output_folder_contents(converted_by_cli):
    files = {path.name for path in converted_by_cli.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "model.safetensors.index.json",
    } <= files
    assert {"configuration_croc.py", "modeling_croc.py", "README.md"} <= files
    index = json.loads((converted_by_cli / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    for shard in shards:
        with safe_open(str(converted_by_cli / shard), framework="pt") as handle:
            assert handle.metadata() == {"format": "pt"}
    config = json.loads((converted_by_cli / "config.json").read_text())
    assert config["model_type"] == "croc" and config["architectures"] == ["CrocForConditionalGeneration"]
    assert config["image_token_id"] == IMAGE_TOKEN_ID and config["vision_feature_layer"] == -2
    assert config["vision_feature_select_strategy"] == "default" and config["image_aspect_ratio"] == "pad"
    assert config["normalize_image_features"] is True and config["croc_stage"] is False
    assert config["prompt_pool_size"] == 2048
    assert config["text_config"]["rope_parameters"]["rope_theta"] == 10000.0
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_croc.CrocForConditionalGeneration"
    generation = json.loads((converted_by_cli / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (1, 2, 0)
    readme = (converted_by_cli / "README.md").read_text()
    assert str(converted_by_cli) in readme and converter.MODEL_ID_PLACEHOLDER not in readme
    assert readme.startswith("---\nlicense: apache-2.0")
    assert {"tokenizer.json", "processor_config.json", "processing_croc.py"} <= files


# ------------------------------------------------------------------------------------------------------ other layouts


@pytest.mark.parametrize(
    "layout, without_tower",
    [("bin-sharded", False), ("safetensors-sharded", False), ("safetensors", True)],
)
def test_release_layouts_convert_to_the_same_logits(tmp_path, state_dict, layout, without_tower):
    tensors = {k: v for k, v in state_dict.items() if not (without_tower and k.startswith("model.vision_tower."))}
    source = write_official_checkpoint(tmp_path / "official", tensors, layout)
    output = converter.convert_croc_checkpoint(source, CLIP, tmp_path / "hf", max_shard_size="300KB")
    assert max_reference_error(output) <= 1e-4


def test_tokenizer_in_checkpoint_gives_a_processor_with_the_image_token(tmp_path, state_dict):
    source = write_official_checkpoint(tmp_path / "official", state_dict, "bin")
    for file in TOKENIZER.iterdir():
        shutil.copy(file, source / file.name)
    output = converter.convert_croc_checkpoint(source, CLIP, tmp_path / "hf", verify=False)
    from modeling_croc.processing_croc import CrocProcessor

    processor = CrocProcessor.from_pretrained(output)
    assert processor.image_token_id == IMAGE_TOKEN_ID
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "USER: <image>\nWhat is it? ASSISTANT:" in prompt
    inputs = processor(images=Image.open(FIXTURE / "image.png"), text=prompt, return_tensors="pt")
    assert int((inputs["input_ids"] == IMAGE_TOKEN_ID).sum()) == NUM_IMAGE_TOKENS


def test_differing_tower_copy_is_reported_and_clip_wins(tmp_path, state_dict, capsys):
    key = "model.vision_tower.vision_tower.vision_model.post_layernorm.weight"
    tensors = dict(state_dict, **{key: state_dict[key] + 1.0})
    source = write_official_checkpoint(tmp_path / "official", tensors, "bin-sharded")
    output = tmp_path / "hf"
    code = converter.main(["--checkpoint", str(source), "--vision-tower", str(CLIP), "--output", str(output)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "warning: 1 of the checkpoint's 55 vision-tower tensors differ" in captured.out
    assert "dropped 8 tensor(s): the official code creates this module but never calls it" in captured.out
    assert max_reference_error(output) <= 1e-4


def test_vicuna_generation_config_keeps_greedy_decoding(tmp_path):
    source = tmp_path / "official"
    source.mkdir()
    vicuna = {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "temperature": 0.9,
        "top_p": 0.6,
        "max_length": 4096,
    }
    (source / "generation_config.json").write_text(json.dumps(vicuna))
    config = modeling_croc.CrocConfig(text_config={"model_type": "llama", "vocab_size": 320, "hidden_size": 64,
                                                   "intermediate_size": 128, "num_hidden_layers": 1,
                                                   "num_attention_heads": 4}, prompt_pool_size=512)  # fmt: skip
    generation_config = converter.build_generation_config(source, config)
    assert not generation_config.do_sample and generation_config.max_length == 4096
    generation_config.save_pretrained(tmp_path / "saved")  # transformers 5 refuses sampling flags without do_sample


def test_bfloat16_output_dtypes(tmp_path, capsys):
    output = tmp_path / "bf16"
    code, stderr = convert_with_main(
        capsys,
        "--checkpoint",
        str(OFFICIAL),
        "--vision-tower",
        str(CLIP),
        "--output",
        str(output),
        "--dtype",
        "bfloat16",
    )
    assert code == 0, stderr
    index = json.loads((output / "model.safetensors.index.json").read_text())
    for shard in set(index["weight_map"].values()):
        with safe_open(str(output / shard), framework="pt") as handle:
            assert {handle.get_slice(key).get_dtype() for key in handle.keys()} == {"BF16"}
    assert json.loads((output / "config.json").read_text())["dtype"] == "bfloat16"


def build_gqa_reference(folder: Path):
    """A random Llava model (grouped-query attention) and the same weights saved as an official Croc checkpoint."""
    from transformers import BertConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.bert.modeling_bert import BertLayer

    torch.manual_seed(0)
    hidden, vocab, image_size, patch = 64, 320, 56, 14
    num_image_tokens = (image_size // patch) ** 2
    text = LlamaConfig(
        hidden_size=hidden, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=vocab, rms_norm_eps=1e-5, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    vision = {
        "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
        "num_attention_heads": 2, "image_size": image_size, "patch_size": patch, "projection_dim": 16,
    }  # fmt: skip
    llava = LlavaForConditionalGeneration(
        LlavaConfig(text_config=text, vision_config=vision, image_token_index=vocab - 1, vision_feature_layer=-2)
    ).eval()
    llava.model.vision_tower.save_pretrained(folder / "clip")  # transformers 5 layout: no `vision_model.` prefix

    official = {}
    for key, tensor in llava.state_dict().items():
        if key.startswith("model.language_model."):
            official["model." + key[len("model.language_model.") :]] = tensor
        elif key.startswith("model.multi_modal_projector.linear_"):
            layer, rest = key[len("model.multi_modal_projector.linear_") :].split(".", 1)
            official[f"model.mm_projector.{0 if layer == '1' else 2}.{rest}"] = tensor
        elif key == "lm_head.weight":
            official[key] = tensor
    official["model.mask_token"] = torch.randn(32, hidden)
    head = BertLayer(BertConfig(hidden_size=hidden, num_attention_heads=1, intermediate_size=4 * hidden))
    official.update({f"transform_block.layers.0.{key}": value for key, value in head.state_dict().items()})
    official["transform_block.position_embeddings.weight"] = torch.randn(num_image_tokens, hidden)
    official["transform_block.resize.weight"] = torch.randn(hidden, hidden)
    official["transform_block.resize.bias"] = torch.randn(hidden)
    for name in ("query", "key", "value", "out"):
        official[f"model.cross_attention.{name}.weight"] = torch.randn(hidden, hidden)
        official[f"model.cross_attention.{name}.bias"] = torch.randn(hidden)
    config = {
        **text.to_dict(), "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
        "rope_theta": 10000.0,
        "mm_hidden_size": 32, "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad", "torch_dtype": "float32",
    }  # fmt: skip
    for unwanted in ("rope_parameters", "dtype", "transformers_version"):
        config.pop(unwanted, None)
    source = folder / "official"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in official.items()}, source / "model.safetensors", metadata={"format": "pt"}
    )
    llava.model.multi_modal_projector.register_forward_hook(lambda module, inputs, out: F.normalize(out, dim=-1))
    return llava, source, folder / "clip", num_image_tokens


def test_grouped_query_attention_checkpoint_matches_an_independent_llava(tmp_path):
    llava, source, clip, num_image_tokens = build_gqa_reference(tmp_path)
    output = converter.convert_croc_checkpoint(source, clip, tmp_path / "hf")
    config = json.loads((output / "config.json").read_text())
    assert config["text_config"]["num_key_value_heads"] == 2 and config["image_token_id"] == 320

    text_ids = torch.tensor([[1, 5, 17, 42], [1, 9, 3, 250]])
    pixel_values = torch.randn(2, 3, 56, 56)
    image_block = torch.full((2, num_image_tokens), 0)
    croc_ids = torch.cat([text_ids[:, :2], image_block + 320, text_ids[:, 2:]], 1)
    llava_ids = torch.cat([text_ids[:, :2], image_block + 319, text_ids[:, 2:]], 1)
    with torch.no_grad():
        expected = llava(input_ids=llava_ids, pixel_values=pixel_values).logits
    logits = logits_of(output, croc_ids, pixel_values)
    assert float((logits - expected).abs().max()) <= 1e-4


# ----------------------------------------------------------------------------------------------------------- failures


def test_hostile_pickle_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "pwned.txt"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    source = tmp_path / "hostile"
    source.mkdir()
    shutil.copy(OFFICIAL / "config.json", source / "config.json")
    torch.save({"model.mask_token": Payload()}, source / "pytorch_model.bin")
    assert not marker.exists()
    code, stderr = convert_with_main(
        capsys, "--checkpoint", str(source), "--vision-tower", str(CLIP), "--output", str(tmp_path / "out")
    )
    assert code == 1
    assert_one_error_line(stderr, "refused to load", "open", "safetensors")
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path, "out")


def test_truncated_safetensors_shard(tmp_path, state_dict, capsys):
    source = write_official_checkpoint(tmp_path / "official", state_dict, "safetensors-sharded")
    shard = source / "model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    code, stderr = convert_with_main(
        capsys, "--checkpoint", str(source), "--vision-tower", str(CLIP), "--output", str(tmp_path / "out")
    )
    assert code == 1
    assert_one_error_line(stderr, "model-00002-of-00003.safetensors", "truncated")
    assert not (tmp_path / "out").exists()


def test_truncated_bin_shard(tmp_path, state_dict, capsys):
    source = write_official_checkpoint(tmp_path / "official", state_dict, "bin")
    weights = source / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, stderr = convert_with_main(
        capsys, "--checkpoint", str(source), "--vision-tower", str(CLIP), "--output", str(tmp_path / "out")
    )
    assert code == 1
    assert_one_error_line(stderr, "pytorch_model.bin", "truncated")


def test_index_naming_a_missing_shard(tmp_path, state_dict, capsys):
    source = write_official_checkpoint(tmp_path / "official", state_dict, "bin-sharded")
    (source / "pytorch_model-00003-of-00003.bin").unlink()
    code, stderr = convert_with_main(
        capsys, "--checkpoint", str(source), "--vision-tower", str(CLIP), "--output", str(tmp_path / "out")
    )
    assert code == 1
    assert_one_error_line(stderr, "missing", "pytorch_model-00003-of-00003.bin")


def test_index_pointing_at_the_wrong_shard(tmp_path, state_dict, capsys):
    source = write_official_checkpoint(tmp_path / "official", state_dict, "safetensors-sharded")
    index_file = source / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"]["lm_head.weight"] = "model-00001-of-00003.safetensors"
    index_file.write_text(json.dumps(index))
    args = ["--checkpoint", str(source), "--vision-tower", str(CLIP), "--output", str(tmp_path / "out")]
    code, stderr = convert_with_main(capsys, *args)
    assert code == 1
    assert_one_error_line(stderr, "does not hold", "lm_head.weight")


def test_ctrl_c_on_the_command_line(tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(converter, "write_safetensors_shard", interrupt)
    args = ["--checkpoint", str(OFFICIAL), "--vision-tower", str(CLIP), "--output", str(tmp_path / "out")]
    code, stderr = convert_with_main(capsys, *args)
    assert code == 130
    assert_one_error_line(stderr, "interrupted")
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path, "out")


def test_wrong_model_type(tmp_path, capsys):
    source = tmp_path / "official"
    source.mkdir()
    (source / "config.json").write_text(
        json.dumps({**json.loads((OFFICIAL / "config.json").read_text()), "model_type": "llama"})
    )
    os.link(OFFICIAL / "pytorch_model.bin", source / "pytorch_model.bin")
    code, stderr = convert_with_main(
        capsys, "--checkpoint", str(source), "--vision-tower", str(CLIP), "--output", str(tmp_path / "out")
    )
    assert code == 1
    assert_one_error_line(stderr, "unsupported model_type 'llama'", "croc_llama")


def test_wrong_shape(tmp_path, state_dict, capsys):
    tensors = dict(state_dict, **{"model.mm_projector.2.weight": torch.zeros(64, 32)})
    source = write_official_checkpoint(tmp_path / "official", tensors, "safetensors")
    code, stderr = convert_with_main(
        capsys, "--checkpoint", str(source), "--vision-tower", str(CLIP), "--output", str(tmp_path / "out")
    )
    assert code == 1
    assert_one_error_line(stderr, "wrong tensor shape", "model.mm_projector.2.weight [64, 32]", "[64, 64]")


def test_unknown_key(tmp_path, state_dict, capsys):
    tensors = dict(state_dict, **{"model.mystery_adapter.weight": torch.zeros(3)})
    source = write_official_checkpoint(tmp_path / "official", tensors, "bin")
    code, stderr = convert_with_main(
        capsys, "--checkpoint", str(source), "--vision-tower", str(CLIP), "--output", str(tmp_path / "out")
    )
    assert code == 1
    assert_one_error_line(stderr, "cannot be placed", "model.mystery_adapter.weight")


def test_offline_hub_id_is_a_clear_error(tmp_path, capsys):
    code, stderr = convert_with_main(
        capsys,
        "--checkpoint",
        "DeepGlint-AI/LLaVA-v1.5-Croc-7b",
        "--vision-tower",
        str(CLIP),
        "--output",
        str(tmp_path / "out"),
    )
    assert code == 1
    assert_one_error_line(stderr, "DeepGlint-AI/LLaVA-v1.5-Croc-7b", "offline")


def test_non_empty_output_is_left_untouched_without_overwrite(tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("precious")
    args = ["--checkpoint", str(OFFICIAL), "--vision-tower", str(CLIP), "--output", str(output)]
    code, stderr = convert_with_main(capsys, *args)
    assert code == 1
    assert_one_error_line(stderr, "not empty", "--overwrite")
    assert [path.name for path in output.iterdir()] == ["keep.txt"]
    assert (output / "keep.txt").read_text() == "precious"

    code, stderr = convert_with_main(capsys, *args, "--overwrite", "--no-verify")
    assert code == 0, stderr
    assert not (output / "keep.txt").exists() and (output / "config.json").is_file()
    assert not leftovers(tmp_path, "out")


@pytest.mark.parametrize("interruption", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_interrupted_run_leaves_no_loadable_folder(tmp_path, monkeypatch, interruption):
    written = []
    original = converter.write_safetensors_shard

    def fail_after_first_shard(path, *args, **kwargs):
        if written:
            raise interruption
        written.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(converter, "write_safetensors_shard", fail_after_first_shard)
    with pytest.raises(type(interruption)):
        converter.convert_croc_checkpoint(OFFICIAL, CLIP, tmp_path / "out", max_shard_size="300KB")
    assert written, "the failure must happen mid-write"
    assert not (tmp_path / "out").exists()
    assert not leftovers(tmp_path, "out")


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, **kwargs: calls.append(("create_repo", kwargs)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kwargs: calls.append(("upload_folder", kwargs)))
    output = converter.convert_croc_checkpoint(
        OFFICIAL, CLIP, tmp_path / "out", push_to_hub="someone/croc-tiny-hf", verify=False
    )
    assert [name for name, _ in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1]["repo_id"] == "someone/croc-tiny-hf" and calls[0][1]["exist_ok"] is True
    assert calls[1][1]["repo_id"] == "someone/croc-tiny-hf" and Path(calls[1][1]["folder_path"]) == output
    assert 'model_id = "someone/croc-tiny-hf"' in (output / "README.md").read_text()
