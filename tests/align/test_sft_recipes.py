"""The `chuan sft` recipes in `configs/` load (a renamed or mistyped key fails here, not in a
user's run), and the Baichuan 2 one keeps the published fine-tuning settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from chuan.align.sft_config import load_sft_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
SFT_RECIPES = sorted(p for p in CONFIGS.glob("*.yaml") if "sft" in p.stem.split("-"))


@pytest.mark.parametrize("recipe", SFT_RECIPES, ids=[p.stem for p in SFT_RECIPES])
def test_sft_recipe_loads(recipe):
    cfg = load_sft_config(recipe)  # keys and values only: the model and data need not exist
    assert cfg.stages and all(stage.data for stage in cfg.stages)
    assert cfg.template == "baichuan2"


def test_tiny_recipe_trains_lora_on_bundled_data():
    cfg = load_sft_config(CONFIGS / "sft-tiny-cpu.yaml")
    assert cfg.finetune == "lora" and (cfg.lora.r, cfg.lora.alpha) == (8, 16.0)
    assert (cfg.max_length, cfg.packing, cfg.eval.holdout) == (256, True, 100)
    sources = cfg.stages[0].data
    for source in sources:
        assert (ROOT / source.path).is_file(), source.path  # bundled, relative to the root
    assert [Path(s.path).name for s in sources] == [
        "translate_zh_en.jsonl",
        "general_zh_en.jsonl",
    ]
    assert all(s.weight for s in sources)
    # the model is what configs/tiny-cpu.yaml pretrains
    pretrain = (CONFIGS / "tiny-cpu.yaml").read_text(encoding="utf-8")
    assert f"out: {Path(cfg.model).parent}\n" in pretrain


def test_baichuan2_recipe_has_the_published_settings():
    cfg = load_sft_config(CONFIGS / "baichuan2-7b-sft.yaml")
    optim = cfg.optim
    assert (optim.lr, optim.schedule, optim.warmup_steps) == (2e-5, "constant", 0)
    assert (optim.betas, optim.eps, optim.grad_clip, optim.weight_decay) == (
        (0.9, 0.98),
        1e-8,
        1.0,
        1e-4,
    )
    assert (cfg.finetune, cfg.max_length, cfg.micro_batch_size, cfg.grad_accum) == (
        "full",
        512,
        16,
        1,
    )
    assert (cfg.precision, cfg.activation_checkpointing, cfg.distributed.strategy) == (
        "bf16",
        True,
        "fsdp",
    )
    assert cfg.stages[0].epochs == 4
    assert cfg.stages[0].data[0].format == "sharegpt"


def test_baichuan2_lora_variant_loads():
    """The commented LoRA variant is `--use_lora True` of fine-tune.py."""
    cfg = load_sft_config(
        CONFIGS / "baichuan2-7b-sft.yaml",
        ["finetune=lora", "lora={r: 1, alpha: 32, dropout: 0.1, targets: [W_pack]}"],
    )
    assert (cfg.finetune, cfg.lora.r, cfg.lora.alpha, cfg.lora.targets) == (
        "lora",
        1,
        32.0,
        ["W_pack"],
    )
    text = (CONFIGS / "baichuan2-7b-sft.yaml").read_text(encoding="utf-8")
    assert "# lora: {r: 1, alpha: 32, dropout: 0.1, targets: [W_pack]}" in text


def test_the_bundled_general_set_reads_whole():
    """The tiny recipe's general set (`scripts/make_sft_general.py`): every record a
    conversation, half the questions Chinese, short answers, each naming its source."""
    import json

    from chuan.align.conversations import read_conversations

    path = ROOT / "src" / "chuan" / "assets" / "sft" / "general_zh_en.jsonl"
    conversations, rejects = read_conversations(path)
    assert (len(conversations), rejects) == (1000, [])
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(len(r["output"]) <= 200 and r["meta"]["licence"] for r in records)
    english = sum(any("a" <= ch.lower() <= "z" for ch in r["instruction"]) for r in records)
    assert english == 500
