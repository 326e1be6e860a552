"""The cross-modal comprehension objective: official parity, masks, matching, gradients, switches."""

import pytest
import torch
from conftest import (
    OFFICIAL,
    image_prompt,
    pad_batch,
    random_pixels,
    tiny_croc_model,
)
from scipy.optimize import linear_sum_assignment

from modeling_croc import CrocForConditionalGeneration
from modeling_croc.comprehension import comprehension_attention_allowed, image_run_ids

# ---------------------------------------------------------------- official parity


def official_stage_batch(image_token_id: int, num_image_tokens: int):
    """`reference_croc_stage.pt` in the HF layout: each -200 expanded into a run of image tokens."""
    recorded = torch.load(OFFICIAL / "reference_croc_stage.pt", weights_only=True)
    ids, labels, mask = recorded["input_ids"], recorded["labels"], recorded["attention_mask"]

    def expand(rows, fill):
        return torch.stack(
            [
                torch.cat([row[:at], torch.full((num_image_tokens,), fill, dtype=row.dtype), row[at + 1 :]])
                for row, at in zip(rows, (ids == -200).int().argmax(dim=1).tolist())
            ]
        )

    return recorded, expand(ids, image_token_id), expand(mask, 1), expand(labels, -100)


def test_official_comprehension_loss_is_reproduced(converted_official):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(converted_official, comprehension_modules=True).eval()
    config = model.config
    config.croc_stage = True
    config.pool_matching, config.attention_scope, config.reconstruction_targets = "nearest", "prefix", "all"
    recorded, input_ids, attention_mask, labels = official_stage_batch(config.image_token_id, config.num_image_tokens)
    with torch.no_grad():
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            pixel_values=recorded["pixel_values"],
            replace_mask=recorded["replace_mask"],
        )
    for name in ("loss", "lm_loss", "reconstruction_loss"):
        torch.testing.assert_close(getattr(out, name), recorded[name], rtol=1e-4, atol=0, msg=name)
    # the official nearest-neighbour choice: cdist + argmin against the pool
    replaced = out.image_hidden_states[recorded["replace_mask"]].view(2, -1, config.text_config.hidden_size)
    expected = torch.cdist(replaced, model.model.prompt_pool).argmin(-1)
    assert torch.equal(out.pool_assignment, expected)


# ---------------------------------------------------------------- masks


def _allowed(image_positions, valid, labels=None, scope="visual"):
    seq_len = len(valid)
    image_mask = torch.zeros(1, seq_len, dtype=torch.bool)
    image_mask[0, image_positions] = True
    padding = torch.tensor([valid])
    labels = None if labels is None else torch.tensor([labels])
    return comprehension_attention_allowed(image_mask, padding, labels, scope)[0]


def test_visual_scope_is_bidirectional_inside_each_image_and_causal_elsewhere():
    # t0 t1 I2 I3 I4 t5 I6 I7 t8 pad
    allowed = _allowed([2, 3, 4, 6, 7], [1] * 9 + [0])
    expected = torch.ones(10, 10).tril().bool()
    expected[2:5, 2:5] = True  # first image sees all of itself
    expected[6:8, 6:8] = True  # second image sees all of itself
    expected[:, 9] = False  # pad key blocked ...
    expected[9, 9] = True  # ... except for its own query row
    assert torch.equal(allowed, expected)
    assert not allowed[2, 6] and allowed[6, 2]  # images see earlier images causally, never later ones


def test_prefix_scope_is_bidirectional_before_the_first_supervised_label():
    labels = [-100, -100, -100, -100, 40, 41, -100, -100]
    allowed = _allowed([1, 2], [1] * 6 + [0, 0], labels, scope="prefix")
    expected = torch.ones(8, 8).tril().bool()
    expected[:, :4] = True  # every query sees the whole prefix 0..3
    expected[:, 6:] = False
    expected[6, 6] = expected[7, 7] = True
    assert torch.equal(allowed, expected)


def test_image_run_ids_number_runs_per_row():
    mask = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 1, 0, 0, 0, 1]], dtype=torch.bool)
    assert image_run_ids(mask).tolist() == [[0, 1, 1, 0, 2, 0], [1, 1, 0, 0, 0, 2]]


def _stage_batch(config, rows, side="right"):
    ids, mask = pad_batch(rows, side=side)
    labels = ids.clone()
    labels[(ids == config.image_token_id) | (mask == 0)] = -100
    labels[:, :2] = -100
    return ids, mask, labels


def test_sdpa_and_eager_agree_under_the_mixed_mask():
    model = tiny_croc_model(croc_stage=True)
    config = model.config
    rows = [image_prompt(config, [5, 6], [7, 8, 9]), image_prompt(config, [10], [11])]
    ids, mask, labels = _stage_batch(config, rows)
    pixels = random_pixels(config, 2)
    replace = torch.rand(2, 16).argsort(1) < 12
    results = {}
    for implementation in ("sdpa", "eager"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=pixels, replace_mask=replace)
        results[implementation] = out
    torch.testing.assert_close(results["sdpa"].loss, results["eager"].loss, atol=1e-5, rtol=1e-5)
    keep = mask.bool()
    torch.testing.assert_close(results["sdpa"].logits[keep], results["eager"].logits[keep], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- matching through the model


def _stage_rows(config):
    return [image_prompt(config, [5, 6], [7, 8, 9]), image_prompt(config, [10], [11, 12])]


def _stage_input_ids(config):
    return pad_batch(_stage_rows(config))[0]


def _run_stage(model, seed=0, replace_mask=None):
    config = model.config
    ids, mask, labels = _stage_batch(config, _stage_rows(config))
    return model(
        input_ids=ids, attention_mask=mask, labels=labels, pixel_values=random_pixels(config, 2, seed),
        replace_mask=replace_mask,
    )


def test_hungarian_assigns_distinct_rows_of_minimum_total_cost():
    model = tiny_croc_model(croc_stage=True)
    out = _run_stage(model)
    assignment = out.pool_assignment
    assert assignment.shape == (2, 12)
    for image in range(2):
        assert len(set(assignment[image].tolist())) == 12
        replaced = out.image_hidden_states[image][out.replace_mask[image]]
        costs = torch.cdist(replaced.double(), model.model.prompt_pool.double()).detach().numpy()
        rows, cols = linear_sum_assignment(costs)
        optimum = costs[rows, cols].sum()
        ours = costs[range(12), assignment[image].numpy()].sum()
        assert ours == pytest.approx(optimum, rel=1e-6)


def test_nearest_takes_each_tokens_closest_row():
    model = tiny_croc_model(croc_stage=True, pool_matching="nearest")
    out = _run_stage(model)
    replaced = out.image_hidden_states[out.replace_mask].view(2, 12, -1)
    assert torch.equal(out.pool_assignment, torch.cdist(replaced, model.model.prompt_pool).argmin(-1))


def test_replaced_tokens_reach_the_llm_as_pool_rows():
    model = tiny_croc_model(croc_stage=True)
    captured = {}
    model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    out = _run_stage(model)
    image_mask = out.logits.new_zeros(out.logits.shape[:2], dtype=torch.bool)
    image_mask |= _stage_input_ids(model.config) == model.config.image_token_id
    per_image = captured["embeds"][image_mask].view(2, 16, -1)
    pool = model.model.prompt_pool
    torch.testing.assert_close(per_image[out.replace_mask], pool[out.pool_assignment.flatten()])
    torch.testing.assert_close(per_image[~out.replace_mask], out.image_hidden_states[~out.replace_mask])


# ---------------------------------------------------------------- gradients and switches


def test_gradients_reach_used_pool_rows_and_the_head_but_never_the_tower():
    model = tiny_croc_model(croc_stage=True).train()
    model.model.vision_tower.requires_grad_(False)
    out = _run_stage(model)
    out.loss.backward()
    pool_grad = model.model.prompt_pool.grad
    used = torch.zeros(16, dtype=torch.bool)
    used[out.pool_assignment.flatten()] = True
    assert bool((pool_grad[used].abs().sum(-1) > 0).all())
    assert bool((pool_grad[~used] == 0).all())
    assert model.reconstruction_head.out_proj.weight.grad.abs().sum() > 0
    assert model.reconstruction_head.layer.attention.self.query.weight.grad.abs().sum() > 0
    assert model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.model.vision_tower.parameters())


def test_reconstruction_targets_replaced_and_all():
    model = tiny_croc_model(croc_stage=True, reconstruction_loss_weight=1.0)
    replace = torch.zeros(2, 16, dtype=torch.bool)
    replace[:, :12] = True
    captured = {}
    model.reconstruction_head.register_forward_hook(lambda m, i, o: captured.update(pred=o))
    with torch.no_grad():
        out_replaced = _run_stage(model, replace_mask=replace)
        pred, target = captured["pred"], out_replaced.image_hidden_states
        model.config.reconstruction_targets = "all"
        out_all = _run_stage(model, replace_mask=replace)
    per_element = torch.nn.functional.smooth_l1_loss(pred, target, beta=0.01, reduction="none")
    torch.testing.assert_close(out_replaced.reconstruction_loss, per_element[:, :12].mean())
    torch.testing.assert_close(out_all.reconstruction_loss, per_element.mean())


def test_objective_off_leaves_plain_llava_behaviour_bit_identical():
    model = tiny_croc_model()
    config = model.config
    rows = [image_prompt(config, [5, 6], [7, 8, 9]), image_prompt(config, [10], [11])]
    ids, mask, labels = _stage_batch(config, rows)
    pixels = random_pixels(config, 2)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=pixels)
        config.croc_stage = True
        during = model(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=pixels)
        config.croc_stage = False
        after = model(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=pixels)
        no_labels = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    assert during.reconstruction_loss is not None and not torch.equal(during.logits, before.logits)
    assert torch.equal(before.logits, after.logits) and torch.equal(before.loss, after.loss)
    assert torch.equal(before.logits, no_labels.logits)
    assert after.reconstruction_loss is None and after.pool_assignment is None


def test_objective_runs_in_eval_mode_and_needs_labels():
    model = tiny_croc_model(croc_stage=True).eval()
    out = _run_stage(model)
    assert out.reconstruction_loss is not None and torch.isfinite(out.loss)
    config = model.config
    ids = torch.tensor([image_prompt(config, [5], [6])])
    plain = model(input_ids=ids, pixel_values=random_pixels(config, 1))
    assert plain.reconstruction_loss is None and plain.loss is None


def test_settings_changed_on_a_built_model_are_checked_at_the_next_forward():
    model = tiny_croc_model(croc_stage=True)
    model.config.attention_scope = "sideways"
    with pytest.raises(ValueError, match=r"attention_scope must be one of \['visual', 'prefix'\]"):
        _run_stage(model)
    model.config.attention_scope = "prefix"
    model.config.pool_matching = "nearest"
    out = _run_stage(model)
    assert out.pool_assignment.shape == (2, 12)


def test_mixed_batch_with_text_only_and_two_image_samples():
    model = tiny_croc_model(croc_stage=True)
    config = model.config
    rows = [image_prompt(config, [5], [6, 7]), [1, 8, 9, 10, 11], image_prompt(config, [12], [13, 14], images=2)]
    ids, mask, labels = _stage_batch(config, rows)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=random_pixels(config, 3))
    assert out.pool_assignment.shape == (3, 12) and torch.isfinite(out.loss)
    out.loss.backward()


def test_caller_replace_mask_is_validated():
    model = tiny_croc_model(croc_stage=True)
    uneven = torch.zeros(2, 16, dtype=torch.bool)
    uneven[0, :12] = True
    uneven[1, :10] = True
    with pytest.raises(ValueError, match=r"same number.*\[12, 10\]"):
        _run_stage(model, replace_mask=uneven)
    with pytest.raises(ValueError, match=r"\[2, 16\]"):
        _run_stage(model, replace_mask=torch.ones(2, 8, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_comprehension_loss_is_finite(dtype):
    model = tiny_croc_model(croc_stage=True).to(dtype)
    out = _run_stage(model)
    assert torch.isfinite(out.loss) and torch.isfinite(out.reconstruction_loss)
    out.loss.backward()
    assert torch.isfinite(model.model.prompt_pool.grad.float()).all()


# ---------------------------------------------------------------- modules present only when asked


def test_inference_models_can_skip_the_comprehension_modules(tmp_path):
    model = tiny_croc_model()
    model.save_pretrained(tmp_path)
    ids = torch.tensor([image_prompt(model.config, [5], [6, 7])])
    pixels = random_pixels(model.config, 1)
    lean, info = CrocForConditionalGeneration.from_pretrained(
        tmp_path, comprehension_modules=False, output_loading_info=True
    )
    assert lean.model.prompt_pool is None and lean.reconstruction_head is None
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert lean.num_parameters() < model.num_parameters()
    with torch.no_grad():
        assert torch.equal(lean(input_ids=ids, pixel_values=pixels).logits, model(input_ids=ids, pixel_values=pixels).logits)
    full = CrocForConditionalGeneration.from_pretrained(tmp_path)
    assert torch.equal(full.model.prompt_pool, model.model.prompt_pool)


def test_the_objective_refuses_a_model_without_its_modules():
    with pytest.raises(ValueError, match="comprehension_modules=True"):
        tiny_croc_model(croc_stage=True, comprehension_modules=False)
    model = tiny_croc_model(comprehension_modules=False)
    model.config.croc_stage = True
    with pytest.raises(ValueError, match="comprehension_modules=True"):
        _run_stage(model)


def test_converted_release_loads_lean_and_keeps_the_pool_on_request(converted_official):
    from transformers import AutoModelForImageTextToText

    lean = AutoModelForImageTextToText.from_pretrained(converted_official)
    assert lean.config.comprehension_modules is False and lean.model.prompt_pool is None
    full = AutoModelForImageTextToText.from_pretrained(converted_official, comprehension_modules=True)
    official = torch.load(OFFICIAL / "croc" / "pytorch_model.bin", weights_only=True)
    assert torch.equal(full.model.prompt_pool, official["model.mask_token"])
    assert torch.equal(full.reconstruction_head.out_proj.weight, official["transform_block.resize.weight"])


def test_flash_attention_is_refused_for_the_mixed_mask():
    model = tiny_croc_model(croc_stage=True)
    model.model.language_model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="needs 'sdpa' or 'eager'"):
        _run_stage(model)
