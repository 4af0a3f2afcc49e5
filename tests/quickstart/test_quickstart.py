"""`chuan quickstart`, reduced (a slice of the sample, a few steps): every stage runs, the
report has sane numbers, and a stopped run continues where it stopped."""

from __future__ import annotations

import json

from chuan.cli import main
from chuan.quickstart import STAGES

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
    markdown = (out / "report.md").read_text(encoding="utf-8")
    for stage in STAGES:
        assert f"| {stage.title} |" in markdown
    assert "chuan pretrain --config" in markdown


def test_quickstart_rejects_unknown_stage(tmp_path, capsys):
    try:
        main(["quickstart", "--out", str(tmp_path), "--until", "nope"])
    except SystemExit as exit_:
        assert "unknown stage 'nope'" in str(exit_.code)
    else:
        raise AssertionError("an unknown --until stage must be an error")
