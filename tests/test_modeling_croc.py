"""CrocConfig / CrocModel / CrocForConditionalGeneration on tiny random configs."""

import json

import pytest
import torch
from conftest import image_prompt, pad_batch, random_pixels, run_without_package, tiny_croc_config, tiny_croc_model
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from modeling_croc import CrocConfig, CrocForConditionalGeneration, CrocModel

# ---------------------------------------------------------------- config


def test_config_defaults_describe_croc_7b():
    config = CrocConfig()
    assert config.num_image_tokens == 576
    assert config.image_token_id == 32000 == config.text_config.vocab_size
    assert config.image_token_index == config.image_token_id  # LLaVA's name is an alias
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert config.normalize_image_features is True and config.croc_stage is False
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (4096, 32)
    assert config.text_config.rms_norm_eps == 1e-5 and config.text_config.max_position_embeddings == 4096
    assert (config.vision_config.hidden_size, config.vision_config.image_size) == (1024, 336)
    assert config.num_replaced_tokens == 432 and config.reconstruction_head_num_heads == 64


def test_num_image_tokens_follows_vision_config():
    assert tiny_croc_config().num_image_tokens == 16
    assert tiny_croc_config(vision={"image_size": 84}, prompt_pool_size=27).num_image_tokens == 36
    assert tiny_croc_config(vision_feature_select_strategy="full").num_image_tokens == 17


def test_config_round_trips(tmp_path):
    config = tiny_croc_config(pool_matching="nearest", attention_scope="prefix", reconstruction_loss_weight=3.0)
    config.save_pretrained(tmp_path)
    loaded = CrocConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "croc"
    # sub-configs given as objects work as well as dicts
    again = CrocConfig(vision_config=config.vision_config, text_config=config.text_config, prompt_pool_size=16)
    assert again.text_config.to_dict() == config.text_config.to_dict()
    assert AutoConfig.from_pretrained(tmp_path).__class__ is CrocConfig


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("pool_matching", "greedy", "hungarian"),
        ("attention_scope", "everything", "prefix"),
        ("reconstruction_targets", "some", "replaced"),
        ("vision_feature_select_strategy", "cls", "default"),
        ("replace_ratio", 1.0, "(0, 1)"),
        ("replace_ratio", 0.0, "(0, 1)"),
    ],
)
def test_config_rejects_out_of_range_values(field, value, allowed):
    with pytest.raises(ValueError, match=allowed.replace("(", r"\(").replace(")", r"\)")):
        tiny_croc_config(**{field: value})


def test_config_rejects_pool_smaller_than_replaced_count_under_hungarian():
    with pytest.raises(ValueError, match=r"prompt_pool_size \(8\).*\(12"):
        tiny_croc_config(prompt_pool_size=8)
    assert tiny_croc_config(prompt_pool_size=8, pool_matching="nearest").prompt_pool_size == 8


# ---------------------------------------------------------------- structure


def test_module_names_are_llavas():
    model = tiny_croc_model()
    children = {name for name, _ in model.model.named_children()}
    assert children == {"vision_tower", "multi_modal_projector", "language_model"}
    assert {name for name, _ in model.named_children()} == {"model", "lm_head", "reconstruction_head"}
    assert "model.prompt_pool" in dict(model.named_parameters())
    assert model.model.prompt_pool.shape == (16, 64)


def test_image_token_is_input_only():
    model = tiny_croc_model()
    vocab = model.config.text_config.vocab_size
    assert model.config.image_token_id == vocab
    assert model.get_input_embeddings().num_embeddings == vocab
    ids = torch.tensor([image_prompt(model.config, [5, 6], [7])])
    out = model(input_ids=ids, pixel_values=random_pixels(model.config, 1))
    assert out.logits.shape == (1, ids.shape[1], vocab)


def test_prompt_pool_is_initialised_standard_normal():
    model = tiny_croc_model(prompt_pool_size=4096)
    pool = model.model.prompt_pool
    assert abs(pool.std().item() - 1.0) < 0.05 and abs(pool.mean().item()) < 0.05


def test_image_features_are_unit_norm_only_when_asked():
    model = tiny_croc_model()
    pixels = random_pixels(model.config, 2)
    features = torch.stack(model.get_image_features(pixels).pooler_output)
    assert features.shape == (2, 16, 64)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(2, 16))
    model.config.normalize_image_features = False
    raw = torch.stack(model.get_image_features(pixels).pooler_output)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2, 16))


def test_matches_transformers_llava_without_normalisation():
    """With normalisation off the graph is LLaVA's: same weights give transformers' LLaVA logits."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    model = tiny_croc_model(normalize_image_features=False)
    config = model.config
    llava_config = LlavaConfig(
        vision_config=config.vision_config.to_dict(),
        text_config={**config.text_config.to_dict(), "vocab_size": config.text_config.vocab_size + 1},
        image_token_index=config.image_token_id,
        vision_feature_layer=-2,
    )
    llava = LlavaForConditionalGeneration(llava_config).eval()
    state = {k: v for k, v in model.state_dict().items() if "prompt_pool" not in k and "reconstruction" not in k}
    state["model.language_model.embed_tokens.weight"] = torch.cat(
        [state["model.language_model.embed_tokens.weight"], torch.zeros(1, 64)]
    )
    state["lm_head.weight"] = torch.cat([state["lm_head.weight"], torch.zeros(1, 64)])
    missing, unexpected = llava.load_state_dict(state, strict=False)
    assert not missing and not unexpected
    ids = torch.tensor([image_prompt(config, [5, 6, 7], [8, 9])])
    pixels = random_pixels(config, 1)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits
        theirs = llava(input_ids=ids, pixel_values=pixels).logits[..., :-1]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- save / load / auto


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = tiny_croc_model()
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert (tmp_path / "generation_config.json").exists()
    loaded = CrocForConditionalGeneration.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    ids = torch.tensor([image_prompt(model.config, [5], [6, 7])])
    pixels = random_pixels(model.config, 1)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, pixel_values=pixels).logits, loaded(input_ids=ids, pixel_values=pixels).logits)


def test_auto_classes_return_package_classes(tmp_path):
    model = tiny_croc_model()
    model.save_pretrained(tmp_path)
    assert type(AutoModelForImageTextToText.from_pretrained(tmp_path)) is CrocForConditionalGeneration
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is CrocModel
    torch.testing.assert_close(base.prompt_pool, model.model.prompt_pool)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForImageTextToText"].endswith("CrocForConditionalGeneration")
    assert (tmp_path / "modeling_croc.py").exists() and (tmp_path / "configuration_croc.py").exists()


def test_trust_remote_code_loads_without_the_package(tmp_path):
    model = tiny_croc_model()
    folder = tmp_path / "croc-remote"
    model.save_pretrained(folder)
    ids = torch.tensor([image_prompt(model.config, [5], [6, 7])])
    pixels = random_pixels(model.config, 1)
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=pixels).logits
    torch.save({"ids": ids, "pixels": pixels, "logits": expected}, tmp_path / "io.pt")
    script = f"""
        import torch
        from transformers import AutoModelForImageTextToText
        model = AutoModelForImageTextToText.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        io = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
        with torch.no_grad():
            logits = model(input_ids=io["ids"], pixel_values=io["pixels"]).logits
        torch.testing.assert_close(logits, io["logits"], atol=1e-6, rtol=1e-6)
        print("REMOTE-OK")
        """
    result = run_without_package(script, tmp_path)
    assert "REMOTE-OK" in result.stdout, result.stderr[-3000:]


# ---------------------------------------------------------------- errors


def test_too_few_and_too_many_image_tokens_raise_with_both_counts():
    model = tiny_croc_model()
    config = model.config
    pixels = random_pixels(config, 1)
    short = torch.tensor([[1, 5] + [config.image_token_id] * 10 + [6]])
    with pytest.raises(ValueError, match=r"10 image tokens.*16 features"):
        model(input_ids=short, pixel_values=pixels)
    two_runs = torch.tensor([image_prompt(config, [5], [6], images=2)])
    with pytest.raises(ValueError, match=r"32 image tokens.*16 features"):
        model(input_ids=two_runs, pixel_values=pixels)
    with pytest.raises(ValueError, match=r"16 image tokens but no pixel_values"):
        model(input_ids=torch.tensor([image_prompt(config, [5], [6])]))


def test_a_run_cut_by_truncation_raises_even_when_the_total_matches():
    model = tiny_croc_model()
    config = model.config
    image = config.image_token_id
    # 2 images = 32 features; sample 0 holds a full run and half of another, sample 1 half a run: 24 + 8 = 32
    rows = [[1, 5] + [image] * 16 + [6] + [image] * 8, [1, 7] + [image] * 8]
    ids, mask = pad_batch(rows)
    with pytest.raises(ValueError, match=r"cut.*\[24, 8\].*multiple of 16"):
        model(input_ids=ids, attention_mask=mask, pixel_values=random_pixels(config, 2))


@pytest.mark.parametrize(
    "shape, what",
    [((3, 56, 56), "rank"), ((1, 1, 56, 56), "channels"), ((1, 3, 64, 64), "size"), ((1, 3, 56, 28), "size")],
)
def test_wrong_pixel_values_raise(shape, what):
    model = tiny_croc_model()
    ids = torch.tensor([image_prompt(model.config, [5], [6])])
    with pytest.raises(ValueError, match=r"pixel_values must have shape \[num_images, 3, 56, 56\]"):
        model(input_ids=ids, pixel_values=torch.zeros(shape))


# ---------------------------------------------------------------- generation and attention


def _two_prompts(config):
    return [image_prompt(config, [5, 6, 7, 8], [9, 10]), image_prompt(config, [11], [12])]


def test_left_padded_batch_generates_exactly_the_single_results():
    model = tiny_croc_model()
    rows = _two_prompts(model.config)
    pixels = random_pixels(model.config, 2)
    singles = []
    for i, row in enumerate(rows):
        out = model.generate(
            input_ids=torch.tensor([row]), pixel_values=pixels[i : i + 1], max_new_tokens=6, do_sample=False
        )
        singles.append(out[0, len(row) :].tolist())
    ids, mask = pad_batch(rows, side="left")
    batched = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=6, do_sample=False)
    assert [r[ids.shape[1] :].tolist() for r in batched] == singles


def test_cache_and_no_cache_give_the_same_tokens_and_beam_and_sampling_run():
    model = tiny_croc_model()
    row = _two_prompts(model.config)[0]
    ids, pixels = torch.tensor([row]), random_pixels(model.config, 1)
    cached = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    beams = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=4, num_beams=3, do_sample=False)
    assert beams.shape[0] == 1 and beams.shape[1] <= ids.shape[1] + 4
    torch.manual_seed(0)
    sampled_a = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=4, do_sample=True, top_k=5)
    torch.manual_seed(0)
    sampled_b = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=4, do_sample=True, top_k=5)
    assert torch.equal(sampled_a, sampled_b)
    assert int((sampled_a[0, len(row) :] >= model.config.text_config.vocab_size).sum()) == 0


def test_images_are_encoded_once_per_generate_call():
    model = tiny_croc_model()
    calls = []
    model.model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    row = _two_prompts(model.config)[0]
    model.generate(input_ids=torch.tensor([row]), pixel_values=random_pixels(model.config, 1), max_new_tokens=5)
    assert len(calls) == 1


def test_eager_and_sdpa_agree_on_a_left_padded_batch():
    model = tiny_croc_model()
    ids, mask = pad_batch(_two_prompts(model.config), side="left")
    pixels = random_pixels(model.config, 2)
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        sdpa = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        model.set_attn_implementation("eager")
        eager = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    keep = mask.bool()
    torch.testing.assert_close(sdpa[keep], eager[keep], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- training


def test_gradients_reach_projector_and_llm_while_the_tower_is_frozen():
    model = tiny_croc_model().train()
    model.model.vision_tower.requires_grad_(False)
    row = image_prompt(model.config, [5, 6], [7, 8, 9])
    ids = torch.tensor([row])
    labels = ids.clone()
    labels[ids == model.config.image_token_id] = -100
    out = model(input_ids=ids, pixel_values=random_pixels(model.config, 1), labels=labels)
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is None for n, g in grads.items() if "vision_tower" in n)
    assert grads["model.multi_modal_projector.linear_1.weight"].abs().sum() > 0
    assert grads["model.language_model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0
    assert grads["lm_head.weight"].abs().sum() > 0
    # the comprehension modules are not used outside the comprehension stage
    assert grads["model.prompt_pool"] is None and grads["reconstruction_head.out_proj.weight"] is None
    assert out.reconstruction_loss is None and torch.equal(out.loss, out.lm_loss)


def test_activation_checkpointing_gives_the_same_gradients():
    def grads(checkpointing):
        model = tiny_croc_model().train()
        model.config.text_config.attention_dropout = 0.0
        if checkpointing:
            model.activation_checkpointing_enable()
        ids = torch.tensor([image_prompt(model.config, [5, 6], [7, 8, 9])])
        labels = torch.where(ids == model.config.image_token_id, -100, ids)
        model(input_ids=ids, pixel_values=random_pixels(model.config, 1), labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5)
