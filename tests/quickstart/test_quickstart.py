"""`chuan quickstart`, reduced (a slice of the sample, a few pretraining and fine-tuning
steps): every stage runs, the report has sane numbers, and a stopped run continues where it
stopped."""

from __future__ import annotations

import json
from pathlib import Path

from chuan.cli import main
from chuan.quickstart import STAGES
from chuan.rag.answer import NO_SOURCE_ANSWER

SMALL = ["--max-docs", "30", "--steps", "12", "--quiet"]


def test_quickstart_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "qs"
    main(["quickstart", "--out", str(out), *SMALL, "--until", "dedup"])
    first = capsys.readouterr().out
    assert "[ 3/" in first and "done before" not in first
    assert not (out / "stages" / "tokenizer.json").exists()

    main(["quickstart", "--out", str(out), *SMALL])
    second = capsys.readouterr().out
    for name in ("sample corpus", "clean", "dedup"):
        assert any(name in line and "done before" in line for line in second.splitlines())
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))["stages"]
    assert list(report) == [s.name for s in STAGES]

    dedup = report["dedup"]
    assert dedup["planted_pairs"] >= 20
    assert dedup["planted_found"] == dedup["planted_pairs"]
    pretrain = report["pretrain"]
    assert pretrain["steps"] == 12
    assert pretrain["final_loss"] < pretrain["first_loss"] - 1.0
    assert (out / "pretrain" / "loss.png").is_file()
    assert (out / "tokenizer" / "compression.png").is_file()
    sft = report["sft"]  # LoRA from the pretrained model, `--steps` steps
    assert sft["steps"] == 12
    assert sft["heldout_loss_after"] < sft["heldout_loss_before"]
    assert sft["heldout_conversations"] == 100
    assert len(sft["replies"]) == 3
    assert all({"prompt", "reference", "before", "after"} <= set(r) for r in sft["replies"])
    assert (out / "sft" / "model" / "config.json").is_file()
    assert (out / "sft" / "adapter" / "adapter_config.json").is_file()
    markdown = (out / "report.md").read_text(encoding="utf-8")
    for stage in STAGES:
        assert f"| {stage.title} |" in markdown
    assert "chuan pretrain --config" in markdown
    assert "chuan sft --config configs/sft-tiny-cpu.yaml" in markdown
    assert "Held-out assistant loss" in markdown
    rag = report["rag"]  # the fine-tuned model answers from a KB of the sample, citing it
    assert rag["chunks"] > 0 and len(rag["answers"]) == 3
    found, unknown = rag["answers"][:2], rag["answers"][2]
    assert all(a["sources"] for a in found)
    assert unknown["sources"] == [] and unknown["text"] == NO_SOURCE_ANSWER
    for answer in found:  # every source given and cited is a document of the sample
        given = {s["index"]: s for s in answer["sources"]}
        assert {c["index"] for c in answer["citations"]} <= set(given)
        for source in answer["sources"]:
            lines = Path(source["source"]).read_text(encoding="utf-8").splitlines()
            assert source["end"] <= len(json.loads(lines[source["line"] - 1])["text"])
    top = found[0]["sources"][0]  # 《登鹳雀楼》 is the second poem of the sample
    assert top["source"].endswith("poetry_zh.jsonl") and top["line"] == 2
    assert "## cited answers" in markdown and NO_SOURCE_ANSWER in markdown
    assert "chuan rag ask" in markdown


def test_quickstart_rejects_unknown_stage(tmp_path, capsys):
    try:
        main(["quickstart", "--out", str(tmp_path), "--until", "nope"])
    except SystemExit as exit_:
        assert "unknown stage 'nope'" in str(exit_.code)
    else:
        raise AssertionError("an unknown --until stage must be an error")


def test_sft_steps_fit_the_time_left_for_them():
    from chuan.quickstart.runner import Context, QuickstartConfig
    from chuan.quickstart.train_stages import SFT_MAX_STEPS, SFT_MIN_STEPS, sft_steps

    def steps(step_seconds, fixed=None):
        ctx = Context(QuickstartConfig(steps=fixed))
        ctx.results["pretrain"] = {"plan": {"step_seconds": step_seconds}}
        return sft_steps(ctx)

    assert steps(0.3) == SFT_MAX_STEPS  # two free cores: every step of the recipe
    assert SFT_MIN_STEPS < steps(0.9) < SFT_MAX_STEPS  # a slower machine: fewer
    assert steps(60.0) == SFT_MIN_STEPS
    assert steps(None, fixed=12) == 12  # --steps
