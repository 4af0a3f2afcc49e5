"""The `chuan sft` config the post-training tests start from: the bundled translation set on a
given base, small enough to run in seconds; tests override fields by keyword."""

from __future__ import annotations

import json
from pathlib import Path

TRANSLATIONS = (
    Path(__file__).parents[2] / "src" / "chuan" / "assets" / "sft" / "translate_zh_en.jsonl"
)


def sft_config(out: Path, base: Path, **fields) -> dict:
    config = {
        "out": str(out),
        "model": str(base),
        "seed": 5,
        "max_length": 96,
        "micro_batch_size": 8,
        "optim": {"lr": 2e-3},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "targets": ["all-linear"]},
        "eval": {"holdout": 40},
        "samples": {"prompts": 0},
        "checkpoint": {"every": 4, "keep": 2},
        "log": {"every": 1, "tensorboard": False, "progress": False},
        "stages": [{"data": [{"path": str(TRANSLATIONS)}], "steps": 12}],
    }
    return config | fields


def translate_or_copy_pairs(path: Path, *, margins: tuple[float, ...] = ()) -> Path:
    """The translation set as 1,000 learnable preference pairs: the reference translation
    chosen, the untranslated input rejected; with `margins`, record i carries
    `margins[i % len(margins)]`."""
    with path.open("w", encoding="utf-8") as out:
        for i, line in enumerate(TRANSLATIONS.read_text(encoding="utf-8").splitlines()):
            r = json.loads(line)
            pair = {"instruction": r["instruction"], "input": r["input"]}
            pair |= {"chosen": r["output"], "rejected": r["input"]}
            if margins:
                pair["margin"] = margins[i % len(margins)]
            out.write(json.dumps(pair, ensure_ascii=False) + "\n")
    return path
