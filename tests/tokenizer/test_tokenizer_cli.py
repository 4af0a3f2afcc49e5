"""The tokenizer verbs end to end: train -> expand -> model init -> resize, through `chuan`."""

import json

import pytest

from chuan.cli import build_parser, main
from chuan.tokenizer.spm import load_sentencepiece


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, test_data):
    """Two thousand lines of real bilingual text as JSONL with categories."""
    tsv = (test_data / "text" / "parallel" / "bible_kjv_cuvs_wenli.tsv").read_text("utf-8")
    rows = [line.split("\t") for line in tsv.splitlines()[1:1001]]
    path = tmp_path_factory.mktemp("corpus") / "bible.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for _, en, zh, _ in rows:
            f.write(json.dumps({"text": en, "category": "en"}) + "\n")
            f.write(json.dumps({"text": zh, "category": "zh"}, ensure_ascii=False) + "\n")
    return path


def test_train_expand_init_resize(corpus, tmp_path, capsys):
    tok = tmp_path / "tok"
    main(
        [
            "tokenizer",
            "train",
            str(corpus),
            "--vocab-size",
            "3000",
            "--out",
            str(tok),
            "--category-weight",
            "zh=2",
        ]
    )
    report = json.loads((tok / "train_report.json").read_text())
    assert report["category_weights"] == {"zh": 2.0}
    sp = load_sentencepiece(tok)
    assert sp.vocab_size() == 3000 and sp.id_to_piece(195) == "<reserved_106>"

    pieces = tmp_path / "pieces.jsonl"
    pieces.write_text('{"piece": "起初神创造"}\n{"piece": "耶和华"}\n', encoding="utf-8")
    expanded = tmp_path / "tok-x"
    main(
        ["tokenizer", "expand", "--base", str(tok), "--pieces", str(pieces), "--out", str(expanded)]
    )
    assert "for reachability" in capsys.readouterr().out
    sp_x = load_sentencepiece(expanded)
    assert [sp_x.id_to_piece(i) for i in range(3000)] == [sp.id_to_piece(i) for i in range(3000)]
    assert len(sp_x.encode("耶和华")) == 1

    model = tmp_path / "model"
    main(["model", "init", "--preset", "tiny", "--tokenizer", str(tok), "--out", str(model)])
    resized = tmp_path / "model-x"
    main(
        [
            "model",
            "resize",
            "--model",
            str(model),
            "--tokenizer",
            str(expanded),
            "--out",
            str(resized),
        ]
    )
    config = json.loads((resized / "config.json").read_text())
    assert config["vocab_size"] == sp_x.vocab_size()


def test_expand_needs_pieces_or_corpus(tmp_path, test_data, capsys):
    base = ["tokenizer", "expand", "--base", str(test_data / "tokenizers" / "llama")]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "--pieces" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="add"):
        main([*base, "--train-on", str(tmp_path), "--out", str(tmp_path / "x")])


def test_expand_flags_reach_the_library(tmp_path, monkeypatch):
    """Every expand option is passed through (a renamed flag once silently did nothing)."""
    import chuan.tokenizer.expand as expand

    seen = {}

    def fake_expand(base, out, **kwargs):
        seen.update(kwargs)
        return expand.ExpandReport(
            base_size=1, added_requested=0, added_for_reachability=0, final_size=1
        )

    monkeypatch.setattr(expand, "expand_tokenizer", fake_expand)
    main(
        [
            "tokenizer",
            "expand",
            "--base",
            "b",
            "--train-on",
            "c",
            "--add",
            "5",
            "--any-script",
            "--seed",
            "7",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert seen == {
        "pieces": None,
        "train_on": ["c"],
        "add": 5,
        "seed": 7,
        "any_script": True,
        "overwrite": False,
    }


@pytest.mark.parametrize(
    "verb",
    [
        ["tokenizer"],
        ["tokenizer", "train"],
        ["tokenizer", "expand"],
        ["tokenizer", "stats"],
        ["model", "resize"],
    ],
)
def test_tokenizer_verbs_have_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: chuan" in capsys.readouterr().out


def test_a_vocabulary_too_small_for_the_characters_names_the_size_that_fits(
    corpus, tmp_path, capsys
):
    """SentencePiece's own advice names an option chuan did not have; chuan's error names the
    smallest vocabulary that fits and `--character-coverage`, and both remedies work."""
    argv = ["tokenizer", "train", str(corpus), "--out", str(tmp_path / "tok"), "--overwrite"]

    def smallest_fit(*extra: str) -> int:
        with pytest.raises(SystemExit) as refused:
            main([*argv, "--vocab-size", "800", *extra])
        message = str(refused.value)
        assert "--character-coverage" in message and "--character_coverage" not in message
        return int(message.split("at least ")[1].split()[0])

    needed = smallest_fit()
    assert needed > 800
    main([*argv, "--vocab-size", str(needed)])
    assert load_sentencepiece(tmp_path / "tok").vocab_size() == needed
    with pytest.raises(SystemExit, match=f"at least {needed} pieces"):
        main([*argv, "--vocab-size", str(needed - 1)])
    # A lower coverage spells rare characters in bytes and fits a smaller vocabulary.
    fewer = smallest_fit("--character-coverage", "0.98")
    assert fewer < needed
    main([*argv, "--vocab-size", str(fewer), "--character-coverage", "0.98"])
    report = json.loads((tmp_path / "tok" / "train_report.json").read_text())
    assert report["settings"]["character_coverage"] == 0.98
    with pytest.raises(SystemExit) as refused:  # SentencePiece's own bounds, checked up front
        main([*argv, "--vocab-size", "800", "--character-coverage", "0.9"])
    assert refused.value.code == 2
    assert ">= 0.98 and <= 1" in capsys.readouterr().err
