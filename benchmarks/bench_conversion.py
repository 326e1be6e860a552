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
"""Peak memory and throughput of `conversion/convert_croc_to_hf.py` on a synthetic multi-GB official checkpoint."""

import json
import math
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "conversion" / "convert_croc_to_hf.py"
TINY_CLIP = REPO_ROOT / "tests" / "fixtures" / "croc-tiny-official" / "clip"  # hidden 48, 336 px, 576 patches
NUM_IMAGE_TOKENS = 576
PEAK_RSS_TARGET = 1.5  # peak RSS / largest input shard

# Runs the converter and records the process's own high-water marks of resident memory (exact, unlike sampling):
# once after the imports (the baseline: torch, transformers, the package) and once at exit. VmHWM belongs to the
# process's own address space; ru_maxrss would also count the benchmark's memory at fork time.
PEAK_RSS_WRAPPER = """
import re, resource, runpy, sys
report, script, *args = sys.argv[1:]
def peak():
    try:
        with open("/proc/self/status") as status:
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)) * 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
runpy.run_path(script, run_name="converter_imports_only")
baseline = peak()
sys.argv = [script, *args]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    with open(report, "w") as file:
        file.write(f"{baseline} {peak()}")
"""


@dataclass(frozen=True)
class SyntheticCroc:
    """Shapes of an official Croc checkpoint: Llama-7B layer sizes, fewer layers, the tiny CLIP's width."""

    hidden: int = 4096
    intermediate: int = 11008
    layers: int = 3
    vocab: int = 32000
    pool: int = 2048
    vision_hidden: int = 48
    shards: int = 3

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        h, f = self.hidden, self.intermediate
        shapes = {"model.mask_token": (self.pool, h), "model.embed_tokens.weight": (self.vocab, h)}
        for layer in range(self.layers):
            prefix = f"model.layers.{layer}."
            shapes.update({f"{prefix}self_attn.{name}_proj.weight": (h, h) for name in "qkvo"})
            shapes.update({f"{prefix}mlp.{name}_proj.weight": (f, h) for name in ("gate", "up")})
            shapes[f"{prefix}mlp.down_proj.weight"] = (h, f)
            shapes[f"{prefix}input_layernorm.weight"] = (h,)
            shapes[f"{prefix}post_attention_layernorm.weight"] = (h,)
        shapes["model.norm.weight"] = (h,)
        for name in ("query", "key", "value", "out"):
            shapes[f"model.cross_attention.{name}.weight"] = (h, h)
            shapes[f"model.cross_attention.{name}.bias"] = (h,)
        shapes.update(
            {
                "model.mm_projector.0.weight": (h, self.vision_hidden),
                "model.mm_projector.0.bias": (h,),
                "model.mm_projector.2.weight": (h, h),
                "model.mm_projector.2.bias": (h,),
                "transform_block.position_embeddings.weight": (NUM_IMAGE_TOKENS, h),
                "transform_block.resize.weight": (h, h),
                "transform_block.resize.bias": (h,),
            }
        )
        bert = "transform_block.layers.0."
        for name in ("query", "key", "value"):
            shapes[f"{bert}attention.self.{name}.weight"] = (h, h)
            shapes[f"{bert}attention.self.{name}.bias"] = (h,)
        shapes.update(
            {
                f"{bert}attention.output.dense.weight": (h, h),
                f"{bert}attention.output.dense.bias": (h,),
                f"{bert}attention.output.LayerNorm.weight": (h,),
                f"{bert}attention.output.LayerNorm.bias": (h,),
                f"{bert}intermediate.dense.weight": (4 * h, h),
                f"{bert}intermediate.dense.bias": (4 * h,),
                f"{bert}output.dense.weight": (h, 4 * h),
                f"{bert}output.dense.bias": (h,),
                f"{bert}output.LayerNorm.weight": (h,),
                f"{bert}output.LayerNorm.bias": (h,),
                "lm_head.weight": (self.vocab, h),
            }
        )
        return shapes

    def official_config(self) -> dict:
        return {
            "architectures": ["CrocLlamaForCausalLM"], "model_type": "croc_llama", "hidden_size": self.hidden,
            "intermediate_size": self.intermediate, "num_hidden_layers": self.layers, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": self.vocab, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
            "rope_theta": 10000.0, "rope_scaling": None, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
            "pad_token_id": 0, "tie_word_embeddings": False, "torch_dtype": "float16",
            "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": self.vision_hidden, "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch", "mm_patch_merge_type": "flat", "image_aspect_ratio": "pad",
            "croc_stage": False, "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        }  # fmt: skip


QUICK = SyntheticCroc(hidden=2048, intermediate=5504, layers=1, vocab=8000)  # ~0.3 GB


def group_into_shards(shapes: dict[str, tuple[int, ...]], shards: int) -> list[list[str]]:
    """Consecutive keys in `shards` groups of about equal bytes."""
    total = sum(math.prod(shape) for shape in shapes.values())
    groups, current, size = [], [], 0
    for key, shape in shapes.items():
        current.append(key)
        size += math.prod(shape)
        if size >= total * (len(groups) + 1) / shards and len(groups) < shards - 1:
            groups.append(current)
            current = []
    return groups + [current] if current else groups


def write_checkpoint(spec: SyntheticCroc, folder: Path, layout: str) -> list[Path]:
    """An official-format fp16 checkpoint in `spec.shards` `.bin` or safetensors shards (one in memory at a time)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(spec.official_config()))
    shapes = spec.tensor_shapes()
    groups = group_into_shards(shapes, spec.shards)
    weight_map, files = {}, []
    generator = torch.Generator().manual_seed(0)
    for index, keys in enumerate(groups):
        stem, suffix = ("model", "safetensors") if layout == "safetensors" else ("pytorch_model", "bin")
        name = f"{stem}-{index + 1:05d}-of-{len(groups):05d}.{suffix}"
        # Cheap, non-constant contents: a small random row repeated (the converter copies bytes either way).
        tensors = {}
        for key in keys:
            shape = shapes[key]
            row = torch.randn(shape[-1], generator=generator).to(torch.float16)
            tensors[key] = row.expand(shape).contiguous() if len(shape) > 1 else row
        if layout == "safetensors":
            save_file(tensors, folder / name, metadata={"format": "pt"})
        else:
            torch.save(tensors, folder / name)
        del tensors
        weight_map.update(dict.fromkeys(keys, name))
        files.append(folder / name)
    index_name = "model.safetensors.index.json" if layout == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return files


def run_with_peak_rss(args: list[str], report: Path) -> tuple[subprocess.CompletedProcess, int, int, float]:
    """Run the converter script with `args`; return the result, its RSS after the imports and at its peak (bytes),
    and the wall time."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_WRAPPER, str(report), str(SCRIPT), *args], capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    baseline, peak = map(int, report.read_text().split()) if report.is_file() else (0, 0)
    return result, baseline, peak, elapsed


def conversion_seconds(stdout: str) -> float | None:
    """The converter's own timing (reading, writing and verifying; no interpreter start-up)."""
    found = re.search(r"in ([\d.]+) s", stdout)
    return float(found.group(1)) if found else None


def bench_layout(spec: SyntheticCroc, layout: str, work: Path) -> list[dict]:
    files = write_checkpoint(spec, work / f"official-{layout}", layout)
    largest_shard = max(path.stat().st_size for path in files)
    total = sum(path.stat().st_size for path in files)
    output = work / f"hf-{layout}"
    args = ["--checkpoint", str(files[0].parent), "--vision-tower", str(TINY_CLIP), "--output", str(output)]
    result, baseline_rss, peak, wall = run_with_peak_rss(
        [*args, "--max-shard-size", "1GB"], work / f"rss-{layout}.txt"
    )
    if result.returncode != 0:
        raise RuntimeError(f"conversion failed: {result.stderr.strip()}")
    seconds = conversion_seconds(result.stdout) or wall
    for path in files:
        path.unlink()
    label = f"{layout} shards, {total / 1e9:.2f} GB"
    measurements = [
        ("conversion peak RSS / largest shard", peak / largest_shard, PEAK_RSS_TARGET),
        ("conversion peak RSS above import baseline / largest shard", (peak - baseline_rss) / largest_shard, None),
        ("conversion peak RSS, GB", peak / 1e9, None),
        ("RSS after imports (torch, transformers, modeling_croc), GB", baseline_rss / 1e9, None),
        ("largest input shard, GB", largest_shard / 1e9, None),
        ("conversion throughput incl. verification, GB/s", total / 1e9 / seconds, None),
        ("end-to-end wall time incl. interpreter start-up, s", wall, None),
    ]
    return [
        {"name": f"{name} ({label})", "value": round(value, 3), "target": target}
        for name, value, target in measurements
    ]


def run(quick: bool = False) -> list[dict]:
    """Convert a synthetic checkpoint (full: ~2.3 GB in three `.bin` shards, plus safetensors shards in quick mode)
    in a subprocess and report its peak RSS relative to the largest input shard and its throughput."""
    spec = QUICK if quick else SyntheticCroc()
    layouts = ("bin", "safetensors") if quick else ("bin",)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-conversion-") as tmp:
        for layout in layouts:
            rows += bench_layout(spec, layout, Path(tmp))
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| metric | value | target |", "| --- | --- | --- |"]
    for row in rows:
        target = "" if row["target"] is None else f"<= {row['target']}"
        lines.append(f"| {row['name']} | {row['value']} | {target} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table(run(quick="--quick" in sys.argv[1:])))


__all__ = ["run"]
