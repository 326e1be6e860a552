"""Shared test helpers: offline mode, tiny Croc configs and inputs, the official tiny reference."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "croc-tiny-official"
REPO_ROOT = Path(__file__).resolve().parent.parent


def tiny_croc_config(**overrides):
    """A Croc config of ~100k parameters: 56 px images of 14 px patches -> 16 image tokens, GQA Llama."""
    from modeling_croc import CrocConfig

    vision = dict(
        model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, image_size=56, patch_size=14, projection_dim=16,
    )
    text = dict(
        model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=99, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
        pad_token_id=0,
    )
    vision.update(overrides.pop("vision", {}))
    text.update(overrides.pop("text", {}))
    settings = dict(prompt_pool_size=16)
    settings.update(overrides)
    return CrocConfig(vision_config=vision, text_config=text, **settings)


def tiny_croc_model(seed: int = 0, **overrides):
    from modeling_croc import CrocForConditionalGeneration

    torch.manual_seed(seed)
    return CrocForConditionalGeneration(tiny_croc_config(**overrides)).eval()


def image_prompt(config, text_before, text_after, images: int = 1) -> list[int]:
    """Token ids: text, then `images` expanded image runs, then text (the processor's layout)."""
    run = [config.image_token_id] * config.num_image_tokens
    return [1, *text_before, *(run * images), *text_after]


def pad_batch(rows: list[list[int]], side: str = "right", pad_id: int = 0):
    """Pad id lists into `input_ids` and `attention_mask` tensors."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
    return ids, mask


def random_pixels(config, num_images: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    return torch.randn(num_images, 3, size, size, generator=generator)


@pytest.fixture(scope="session")
def converted_official(tmp_path_factory):
    """The official tiny checkpoint converted by the package's converter (function API), as a folder path."""
    from conversion.convert_croc_to_hf import convert_croc_checkpoint

    out = tmp_path_factory.mktemp("converted") / "croc-tiny"
    tokenizer = OFFICIAL / "tokenizer"
    convert_croc_checkpoint(
        checkpoint=str(OFFICIAL / "croc"),
        vision_tower=str(OFFICIAL / "clip"),
        output=str(out),
        tokenizer=str(tokenizer) if tokenizer.exists() else None,
    )
    return out


class TinyImageTextDataset(torch.utils.data.Dataset):
    """One image per sample and 2-5 supervised tokens at the end, so samples weigh differently in the LM loss.

    With `with_replace_mask`, each sample also carries a fixed comprehension-stage replace mask, so runs compare.
    """

    def __init__(self, config, size: int = 8, seed: int = 0, with_replace_mask: bool = False):
        generator = torch.Generator().manual_seed(seed)
        self.rows = []
        for i in range(size):
            supervised = 2 + i % 4
            text = torch.randint(3, 90, (2 + supervised,), generator=generator).tolist()
            ids = torch.tensor(image_prompt(config, text[:2], text[2:]))
            labels = torch.where(torch.arange(len(ids)) >= len(ids) - supervised, ids, -100)
            row = dict(input_ids=ids, labels=labels, pixel_values=random_pixels(config, 1, seed=seed * 100 + i)[0], id=i)
            if with_replace_mask:
                order = torch.randperm(config.num_image_tokens, generator=generator)
                row["replace_mask"] = torch.zeros(config.num_image_tokens, dtype=torch.bool)
                row["replace_mask"][order[: config.num_replaced_tokens]] = True
            self.rows.append(row)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


def collate_tiny_batch(samples: list[dict]) -> dict:
    """Right-pad `TinyImageTextDataset` samples into a model batch."""
    ids, mask = pad_batch([s["input_ids"].tolist() for s in samples])
    labels, _ = pad_batch([s["labels"].tolist() for s in samples], pad_id=-100)
    batch = dict(
        input_ids=ids, attention_mask=mask, labels=labels, pixel_values=torch.stack([s["pixel_values"] for s in samples])
    )
    if "replace_mask" in samples[0]:
        batch["replace_mask"] = torch.stack([s["replace_mask"] for s in samples])
    return batch


def tiny_training_args(output_dir, **overrides):
    """CPU `TrainingArguments` for a few quiet, reproducible steps."""
    from transformers import TrainingArguments

    settings = dict(
        output_dir=str(output_dir), per_device_train_batch_size=2, learning_rate=5e-3, max_steps=4, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, remove_unused_columns=False, dataloader_num_workers=0,
        disable_tqdm=True, seed=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


HIDE_PACKAGE = f"""
import sys, importlib.abc
class HidePackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "modeling_croc" or name.startswith("modeling_croc."):
            raise ImportError("modeling_croc is hidden in this test")
sys.meta_path.insert(0, HidePackage())
sys.path = [p for p in sys.path if p not in ("", {str(REPO_ROOT)!r})]
try:
    import modeling_croc
    raise SystemExit("modeling_croc is still importable")
except ImportError:
    pass
"""


def run_without_package(script: str, workdir, timeout: int = 300):
    """Run `script` in a fresh Python where `modeling_croc` cannot be imported (the Hub `trust_remote_code` path)."""
    import subprocess
    import sys
    import textwrap

    environment = {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(Path(workdir) / "modules"), "PYTHONPATH": "",
    }
    return subprocess.run(
        [sys.executable, "-c", HIDE_PACKAGE + textwrap.dedent(script)],
        cwd=workdir, env=environment, capture_output=True, text=True, timeout=timeout,
    )
