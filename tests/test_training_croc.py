"""The three-stage recipe on Trainer: freezing, optimizer groups, logged losses, gradient accumulation."""

import pytest
import torch
from conftest import TinyImageTextDataset, collate_tiny_batch, tiny_croc_model, tiny_training_args

from modeling_croc.training_croc import STAGES, CrocTrainer, configure_stage


def stage_dataset(config, size=8):
    return TinyImageTextDataset(config, size=size, with_replace_mask=True)


def _args(tmp_path, **overrides):
    return tiny_training_args(tmp_path, **{"learning_rate": 2e-3, "max_steps": 6, "logging_steps": 2, **overrides})


@pytest.mark.parametrize(
    "stage, trained, frozen",
    [
        ("1", {"multi_modal_projector"}, {"language_model", "lm_head", "prompt_pool", "reconstruction_head"}),
        ("1.5", {"multi_modal_projector", "language_model", "lm_head", "prompt_pool", "reconstruction_head"}, set()),
        ("2", {"multi_modal_projector", "language_model", "lm_head"}, {"prompt_pool", "reconstruction_head"}),
    ],
)
def test_configure_stage_freezes_what_the_official_recipe_freezes(stage, trained, frozen):
    model = tiny_croc_model()
    counts = configure_stage(model, STAGES[stage])
    assert set(counts) == trained
    assert model.config.croc_stage == (stage == "1.5")
    for name, param in model.named_parameters():
        if "vision_tower" in name or any(part in name for part in frozen):
            assert not param.requires_grad, name


def test_projector_gets_its_own_learning_rate(tmp_path):
    model = tiny_croc_model()
    configure_stage(model, STAGES["2"])
    trainer = CrocTrainer(model=model, args=_args(tmp_path, weight_decay=0.1), projector_learning_rate=1.5e-4)
    optimizer = trainer.create_optimizer()
    projector = {id(p) for p in model.model.multi_modal_projector.parameters()}
    for group in optimizer.param_groups:
        is_projector = all(id(p) in projector for p in group["params"])
        assert group["lr"] == (1.5e-4 if is_projector else 2e-3)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(
        1 for p in model.parameters() if p.requires_grad
    )


def test_stage_one_point_five_trains_and_logs_both_losses(tmp_path):
    model = tiny_croc_model(reconstruction_head_dropout=0.0)
    configure_stage(model, STAGES["1.5"])
    model.train()
    dataset = stage_dataset(model.config)
    trainer = CrocTrainer(
        model=model, args=_args(tmp_path, max_steps=12), train_dataset=dataset, data_collator=collate_tiny_batch,
        projector_learning_rate=1.5e-4,
    )
    with torch.no_grad():
        model.eval()
        before = model(**collate_tiny_batch([dataset[i] for i in range(len(dataset))])).loss.item()
    trainer.train()
    with torch.no_grad():
        model.eval()
        after = model(**collate_tiny_batch([dataset[i] for i in range(len(dataset))])).loss.item()
    assert after < before
    logs = [entry for entry in trainer.state.log_history if "loss" in entry and "lm_loss" in entry]
    assert logs and all("reconstruction_loss" in entry for entry in logs)
    first = logs[0]
    assert first["loss"] == pytest.approx(first["lm_loss"] + first["reconstruction_loss"], rel=1e-3)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    def params_after_one_step(batch_size, accumulation):
        model = tiny_croc_model(reconstruction_head_dropout=0.0)
        configure_stage(model, STAGES["1.5"])
        args = _args(
            tmp_path / f"run{batch_size}", per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation, max_steps=1, optim="sgd", learning_rate=0.5,
            lr_scheduler_type="constant",
        )
        trainer = CrocTrainer(model=model, args=args, train_dataset=stage_dataset(model.config, size=4),
                              data_collator=collate_tiny_batch)
        trainer.train()
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    whole, accumulated = params_after_one_step(4, 1), params_after_one_step(2, 2)
    for name in whole:
        torch.testing.assert_close(whole[name], accumulated[name], atol=2e-6, rtol=1e-4, msg=name)


def test_comprehension_stage_needs_the_modules():
    model = tiny_croc_model(comprehension_modules=False)
    with pytest.raises(ValueError, match=r"comprehension_modules=True"):
        configure_stage(model, STAGES["1.5"])
    assert configure_stage(model, STAGES["2"])["language_model"] > 0
