"""The `chuan` verbs of the foundation: init, info, convert, generate, and their errors."""

import json
import subprocess
import sys

import pytest

from chuan.cli import build_parser, main


def test_model_init_info_generate(tmp_path, capsys):
    out = tmp_path / "tiny"
    main(
        [
            "model",
            "init",
            "--preset",
            "tiny",
            "--vocab-size",
            "512",
            "--seed",
            "1",
            "--out",
            str(out),
        ]
    )
    assert "984,192 parameters" in capsys.readouterr().out  # 2*512*128 + 853,120 (body)
    main(["model", "info", str(out)])
    info = capsys.readouterr().out
    assert "rope" in info and "512" in info
    main(["generate", str(out), "--prompt-ids", "1 5 9", "--max-new-tokens", "6"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["prompt_ids"] == [1, 5, 9] and len(result["new_ids"]) <= 6
    main(["generate", str(out), "--prompt-ids", "1 5 9", "--max-new-tokens", "6"])
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again == result  # greedy by default: deterministic


def test_init_takes_vocabulary_and_files_from_a_tokenizer(test_data, tmp_path):
    main(
        [
            "model",
            "init",
            "--preset",
            "tiny",
            "--tokenizer",
            str(test_data / "tokenizers" / "llama"),
            "--out",
            str(tmp_path / "m"),
        ]
    )
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["vocab_size"] == 32000
    assert (tmp_path / "m" / "tokenizer.model").is_file()


def test_errors_are_one_line_with_the_fix(tmp_path, capsys):
    main(["model", "init", "--preset", "tiny-alibi", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="ALiBi"):
        main(["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--to", "llama"])
    with pytest.raises(SystemExit, match="--overwrite"):
        main(["model", "init", "--preset", "tiny", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="missing: no such model dir"):
        main(["convert", str(tmp_path / "missing"), str(tmp_path / "c"), "--to", "llama"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("out: x\npreset: tiny\ntokenizer: t\nstages: [{data: [d]}]\n")
    with pytest.raises(SystemExit, match=r"unknown key 'optim\.learning_rate'"):
        main(["pretrain", "--config", str(recipe), "optim.learning_rate=1"])
    with pytest.raises(SystemExit, match="make one with `chuan data pack"):
        main(["pretrain", "--config", str(recipe), f"out={tmp_path / 'run'}"])


@pytest.mark.parametrize(
    "verb",
    [
        [],
        ["model"],
        ["model", "init"],
        ["model", "info"],
        ["convert"],
        ["generate"],
        ["data", "pack"],
        ["data", "clean"],
        ["data", "dedup"],
        ["data", "quality", "train"],
        ["data", "quality", "score"],
        ["data", "mix"],
        ["pretrain"],
    ],
)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: chuan" in capsys.readouterr().out


def test_console_script_runs():
    done = subprocess.run(
        [sys.executable, "-m", "chuan.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "convert" in done.stdout
