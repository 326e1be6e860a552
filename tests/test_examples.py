"""The examples run as a newcomer runs them: no arguments, no network."""

import importlib.util
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"


def run_script(args, timeout=600, **env):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=timeout
    )


def test_quickstart_runs_without_arguments():
    result = run_script([str(EXAMPLES / "quickstart.py")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "answer:" in result.stdout
    assert "DeepGlint-AI/LLaVA-v1.5-Croc-7b" in result.stdout


def test_pretrain_recipe_chains_the_three_stages(tmp_path):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import pretrain_croc
    finally:
        sys.path.remove(str(EXAMPLES))
    pretrain_croc.main(["--max-steps", "1", "--output-dir", str(tmp_path)])
    for stage in ("1", "1.5", "2"):
        assert (tmp_path / f"stage{stage}" / "config.json").exists()
        assert (tmp_path / f"stage{stage}" / "processor_config.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_comprehension_stage_under_torchrun_and_deepspeed_zero3(tmp_path):
    result = run_script(
        [
            "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29533",
            str(EXAMPLES / "pretrain_croc.py"), "--stage", "1.5", "--max-steps", "2",
            "--deepspeed", str(EXAMPLES / "ds_zero3.json"), "--output-dir", str(tmp_path),
        ],
        DS_ACCELERATOR="cpu",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "stage1.5" / "config.json").exists()
    assert "reconstruction_loss" in result.stdout + result.stderr
