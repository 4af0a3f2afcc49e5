"""`chuan eval mcq`: loaders on the real benchmark files, exact prompt strings per preset,
in-context choice tokens (A vs ▁A) on real tokenizers, aggregation by hand, stub models with
known answers, and agreement with an independent test-side re-implementation of the Hendrycks,
Baichuan C-Eval and CMMLU scripts on a tiny model."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import re
from pathlib import Path
from types import SimpleNamespace

import datasets
import pandas as pd
import pytest
import torch
import yaml

from chuan.cli import eval_mcq
from chuan.documents import RecordError
from chuan.eval import mcq_data, prompts, subjects
from chuan.eval.mcq import (
    McqConfig,
    PromptEncoder,
    _prefix_groups,
    _prefix_length,
    aggregate,
    build_request,
    build_requests,
    choice_context,
    evaluate_loaded,
    score_requests,
    variant_ids,
)
from chuan.eval.mcq_data import McqItem
from chuan.infer.loading import load_model, load_saved_tokenizer
from chuan.model.checkpoint import init_model_dir
from chuan.tokenizer.hf import write_tokenizer_dir
from chuan.tokenizer.spm import load_proto
from chuan.tokenizer.train import train_tokenizer
from helpers.corpus import write_jsonl
from helpers.pretrain_fixtures import bible_documents

LM_EVAL_TASKS = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks"
CONTEXT = 512  # the tiny preset's context length


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def eval_root(test_data) -> Path:
    return test_data / "eval"


@pytest.fixture(scope="module")
def tokenizer_dir(test_data, tmp_path_factory) -> Path:
    """A 3,000-piece Baichuan 2-style tokenizer (no dummy prefix) trained on Bible verses in
    English and Chinese and Tatoeba pairs."""
    root = tmp_path_factory.mktemp("mcq_tok")
    pairs = (test_data / "text" / "parallel" / "tatoeba_cmn_eng.txt").read_text("utf-8-sig")
    docs = bible_documents(test_data, 2000) + [
        {"text": line.replace("\t", "\n")} for line in pairs.splitlines()[:3000]
    ]
    corpus = write_jsonl(root / "corpus.jsonl", docs)
    train_tokenizer(corpus, root / "tok", vocab_size=3000, num_threads=2, progress=False)
    return root / "tok"


@pytest.fixture(scope="module")
def model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random model; the wide init (0.2) makes its letter logits depend on the prompt."""
    out = tmp_path_factory.mktemp("mcq_model") / "tiny"
    init_model_dir(out, "tiny", tokenizer_dir=tokenizer_dir, seed=11, initializer_range=0.2)
    return out


@pytest.fixture(scope="module")
def tok(model_dir):
    return load_saved_tokenizer(model_dir)


@pytest.fixture(scope="module")
def llama_tok(test_data, tmp_path_factory):
    """The LLaMA tokenizer: a dummy-prefix SentencePiece model, where "A" alone is `▁A`."""
    proto = load_proto(test_data / "tokenizers" / "llama" / "tokenizer.model")
    return load_saved_tokenizer(
        write_tokenizer_dir(tmp_path_factory.mktemp("llama") / "tok", proto)
    )


def run_cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="chuan eval")
    eval_mcq.register(parser.add_subparsers(dest="eval_verb", required=True))
    args = parser.parse_args(argv)
    args.func(args)


def item(question="1+1=?", choices=("1", "2", "3", "4"), answer="B", subject="s", index=0):
    return McqItem(subject, index, question, tuple(choices), answer, "f.csv", index + 2)


# --------------------------------------------------------------------------- subjects


def test_subject_tables_have_the_published_sizes(eval_root):
    mmlu_sub = subjects.MMLU_SUBCATEGORY
    assert len(mmlu_sub) == 57 and len(set(mmlu_sub.values())) == 17
    assert all(len(subjects.subject_categories("mmlu", s)) == 1 for s in mmlu_sub)
    assert len(subjects.CMMLU_SUBJECTS) == 67
    china = [
        s
        for s in subjects.CMMLU_SUBJECTS
        if "China specific" in subjects.subject_categories("cmmlu", s)
    ]
    assert len(china) == 15
    # China-specific subjects also count in their discipline's category.
    assert all(len(subjects.subject_categories("cmmlu", s)) == 2 for s in china)
    ceval = [subjects.subject_categories("ceval", s)[0] for s in subjects.CEVAL_SUBJECTS]
    assert {c: ceval.count(c) for c in subjects.CEVAL_CATEGORIES} == {
        "STEM": 20,
        "Social Science": 10,
        "Humanities": 11,
        "Other": 11,
    }
    assert subjects.subject_categories("ceval", "clinical_medicine") == ("Other",)
    assert len(subjects.CEVAL_HARD) == 8 and set(subjects.CEVAL_HARD) <= set(
        subjects.CEVAL_SUBJECTS
    )
    # The shipped files name exactly the published subjects.
    for task, split in (("mmlu", "dev"), ("cmmlu", "dev"), ("ceval", "val"), ("ceval", "dev")):
        files = mcq_data.subject_files(eval_root / task, split)
        assert tuple(files) == subjects.known_subjects(task)


def _lm_eval_yamls(folder: str, prefix: str) -> dict[str, dict]:
    return {
        path.stem.removeprefix(prefix): yaml.safe_load(path.read_text("utf-8"))
        for path in (LM_EVAL_TASKS / folder).glob(f"{prefix}*.yaml")
    }


def test_categories_and_chinese_names_agree_with_lm_evaluation_harness():
    """An independent source: the task files lm-evaluation-harness ships. It files MMLU's
    anatomy under STEM; Hendrycks' categories.py has it under health, i.e. other."""
    tags = {"STEM": "stem", "humanities": "humanities", "social sciences": "social_sciences"}
    differ = []
    for subject, config in _lm_eval_yamls("mmlu/default", "mmlu_").items():
        (category,) = subjects.subject_categories("mmlu", subject)
        if config["tag"] != f"mmlu_{tags.get(category, category)}_tasks":
            differ.append((subject, category, config["tag"]))
    assert differ == [("anatomy", "other", "mmlu_stem_tasks")]
    for task, prefix, pattern in (
        ("ceval", "ceval-valid_", r"^以下是中国关于(.+?)(?:考试)?的单项选择题"),
        ("cmmlu", "cmmlu_", r"^以下是关于(.+)的单项选择题"),
    ):
        configs = _lm_eval_yamls(task, prefix)
        assert set(configs) == set(subjects.known_subjects(task))
        for subject, config in configs.items():
            name = re.match(pattern, config["description"]).group(1)
            assert subjects.chinese_name(task, subject) == name, subject


# --------------------------------------------------------------------------- loaders


def test_loaders_read_the_published_question_counts(eval_root):
    for task, split, subject_count, per_subject, total in (
        ("cmmlu", "dev", 67, 5, 335),
        ("mmlu", "dev", 57, 5, 285),
        ("ceval", "dev", 52, 5, 260),
        ("ceval", "val", 52, None, 1346),
    ):
        data = mcq_data.load_split(eval_root / task, split)
        assert len(data) == subject_count
        assert sum(len(v) for v in data.values()) == total
        if per_subject:
            assert {len(v) for v in data.values()} == {per_subject}
        answers = {i.answer for items in data.values() for i in items}
        assert answers == set(mcq_data.LETTERS)


@pytest.mark.parametrize(
    ("task", "split", "columns"),
    [
        ("ceval", "dev", ["question", "A", "B", "C", "D", "answer"]),
        ("cmmlu", "dev", ["Question", "A", "B", "C", "D", "Answer"]),
    ],
)
def test_loaders_agree_with_pandas_on_quoted_multiline_rows(eval_root, task, split, columns):
    for subject, path in mcq_data.subject_files(eval_root / task, split).items():
        ours = mcq_data.read_subject_file(path, subject)
        theirs = pd.read_csv(path, dtype=str, keep_default_na=False)[columns].values.tolist()
        assert [[i.question, *i.choices, i.answer] for i in ours] == theirs


def test_both_mmlu_layouts_read_the_same_questions(eval_root, tmp_path):
    """The shipped copy (header, 0-based int answers) and Hendrycks' original (no header,
    letters), written here from the same rows."""
    headed = eval_root / "mmlu" / "dev" / "abstract_algebra_dev.csv"
    with headed.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    original = tmp_path / "dev" / "abstract_algebra_dev.csv"
    original.parent.mkdir()
    with original.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([*r[:5], "ABCD"[int(r[5])]] for r in rows)
    a = mcq_data.read_subject_file(headed, "abstract_algebra")
    b = mcq_data.read_subject_file(original, "abstract_algebra")
    assert [(i.question, i.choices, i.answer) for i in a] == [
        (i.question, i.choices, i.answer) for i in b
    ]
    assert a[1].question.startswith("Statement 1 | If aH") and a[1].choices[0] == "True, True"
    assert [i.line for i in b] == [i.line - 1 for i in a]  # no header line
    assert mcq_data.load_split(tmp_path, "dev")["abstract_algebra"][4].answer == a[4].answer


@pytest.mark.parametrize(
    ("text", "line", "expect"),
    [
        (
            "question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,1\nq,a,b,c,d,4\n",
            3,
            "answer",
        ),
        (",Question,A,B,C,D,Answer\n0,q,a,b,c,d,A\n1,q,a,b,c,E\n", 3, "expected 7 fields"),
        ('id,question,A,B,C,D,answer\n0,"  ",a,b,c,d,A\n', 2, "'question': empty"),
        ('id,question,A,B,C,D,answer,explanation\n0,q,a,b,c,d,A,"x\ny"\n1,q,a,b,c,d,Z,e\n', 4, "Z"),
        ("q,a,b,c,d\n", 1, "expected 6 fields"),
        ("question,A,B,C\n", 1, "choice columns"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, text, line, expect):
    path = tmp_path / "x_dev.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecordError, match=re.escape(expect)) as err:
        mcq_data.read_subject_file(path, "x")
    assert err.value.line == line and err.value.path == str(path)


def test_undecodable_and_empty_files_are_errors(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"q,\xff\xfe,b,c,d,A\n")
    with pytest.raises(RecordError, match="not UTF-8"):
        mcq_data.read_subject_file(tmp_path / "a.csv", "a")
    (tmp_path / "b.csv").write_text("id,question,A,B,C,D,answer\n", encoding="utf-8")
    with pytest.raises(RecordError, match="no questions"):
        mcq_data.read_subject_file(tmp_path / "b.csv", "b")


def test_split_choice_and_unanswered_test_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="no split folder"):
        mcq_data.default_split(tmp_path)
    for split in ("dev", "val"):
        (tmp_path / split).mkdir()
        (tmp_path / split / f"law_{split}.csv").write_text(
            "id,question,A,B,C,D,answer\n0,q,a,b,c,d,A\n", encoding="utf-8"
        )
    assert mcq_data.default_split(tmp_path) == "val"
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "law_test.csv").write_text(
        "id,question,A,B,C,D\n0,q,a,b,c,d\n", encoding="utf-8"
    )
    assert mcq_data.default_split(tmp_path) == "test"
    data = mcq_data.load_split(tmp_path, "test")
    assert data["law"][0].answer is None
    with pytest.raises(ValueError, match="no answer column.*--split val"):
        mcq_data.require_answers(data, "test")
    with pytest.raises(FileNotFoundError, match="subject.*logic"):
        mcq_data.load_split(tmp_path, "val", ["law", "logic"])


# --------------------------------------------------------------------------- prompts


def demo_rows(n=3, subject="abstract_algebra"):
    return [
        item(f"Q{i}?", (f"a{i}", f"b{i}", f"c{i}", f"d{i}"), "ABCD"[i % 4], subject, i)
        for i in range(n)
    ]


def chars(text: str) -> int:
    return len(text)


def test_hendrycks_prompt_is_exact():
    fmt = prompts.prompt_format("hendrycks", "mmlu")
    ask = item("What is 2+2?", ("1", "2", "3", "4"), "D", "abstract_algebra", 9)
    got = prompts.build_prompt(fmt, ask, demo_rows(2), chars, 10_000)
    assert got.shots == 2
    assert got.text == (
        "The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
        "Q0?\nA. a0\nB. b0\nC. c0\nD. d0\nAnswer: A\n\n"
        "Q1?\nA. a1\nB. b1\nC. c1\nD. d1\nAnswer: B\n\n"
        "What is 2+2?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:"
    )
    assert prompts.prompt_format("baichuan", "mmlu").query(ask) == fmt.query(ask)


def test_baichuan_ceval_prompt_is_exact_with_datasets_shuffle_order():
    fmt = prompts.prompt_format("baichuan", "ceval")
    dev = demo_rows(5, "mao_zedong_thought")
    asked = item("问题？", ("甲", "乙", "丙", "丁"), "C", "mao_zedong_thought", 0)
    ask = dataclasses.replace(asked, path="val.csv")  # a val question: no dev row is left out
    order = datasets.Dataset.from_list([{"i": d.index} for d in dev]).shuffle(seed=123)["i"]
    got = prompts.build_prompt(fmt, ask, prompts.select_demos(fmt, ask, dev, 5), chars, 10_000)
    demos = "".join(
        f"\nQ{i}?\nA. a{i}\nB. b{i}\nC. c{i}\nD. d{i}\n答案：{'ABCD'[i % 4]}" for i in order
    )
    assert got.text == (
        "以下是中国关于毛泽东思想和中国特色社会主义理论概论考试的单项选择题，请选出其中的正确答案。\n"
        + demos
        + "\n问题？\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案："
    )
    zero = prompts.build_prompt(fmt, ask, [], chars, 10_000).text
    assert zero.startswith("以下是中国关于毛泽东思想") and "答案。\n\n问题？\nA. 甲" in zero


def test_cmmlu_official_prompt_is_exact():
    fmt = prompts.prompt_format("cmmlu-official", "cmmlu")
    ask = item("问题？", ("甲", "乙", "丙", "丁"), "C", "agronomy", 7)
    got = prompts.build_prompt(fmt, ask, demo_rows(1, "agronomy"), chars, 10_000)
    assert got.text == (
        "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n"
        "题目：Q0?\nA. a0\nB. b0\nC. c0\nD. d0\n答案是：A\n\n"
        "题目：问题？\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案是："
    )


@pytest.mark.parametrize(
    ("preset", "task", "subject", "header"),
    [
        (
            "colossal-2023",
            "mmlu",
            "high_school_us_history",
            "The following are answers for questions in an exam.\n\n",
        ),
        ("colossal-2023", "cmmlu", "agronomy", "以下是考试中各个问题的答案。\n\n"),
        ("colossal-2023", "ceval", "law", "以下是考试中各个问题的答案。\n\n"),
        (
            "colossal-2023-12",
            "mmlu",
            "high_school_us_history",
            "The following are multiple choice questions (with answers) about "
            "High School US History.\n\n",
        ),
        (
            "colossal-2023-12",
            "cmmlu",
            "agronomy",
            "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n",
        ),
        (
            "colossal-2023-12",
            "ceval",
            "law",
            "以下是中国关于法学考试的单项选择题，请选出其中的正确答案。\n\n",
        ),
    ],
)
def test_colossal_prompts_are_exact(preset, task, subject, header):
    fmt = prompts.prompt_format(preset, task)
    ask = item("Why?", ("w", "x", "y", "z"), "A", subject, 5)
    got = prompts.build_prompt(fmt, ask, demo_rows(2, subject), chars, 10_000).text
    if task == "mmlu":
        demo = "Question: Q{0}?\nA. a{0}\nB. b{0}\nC. c{0}\nD. d{0}\nAnswer: {1}\n\n"
        query = "Question: Why?\nA. w\nB. x\nC. y\nD. z\nAnswer: "
        instruction = (
            "The following is a single-choice question on High School US History. "
            "Answer the question by replying A, B, C or D."
        )
    else:
        demo = "题目：Q{0}?\nA. a{0}\nB. b{0}\nC. c{0}\nD. d{0}\n答案：{1}\n\n"
        query = "题目：Why?\nA. w\nB. x\nC. y\nD. z\n答案："
        instruction = header.removesuffix("\n\n") if preset.endswith("12") else None
    assert got == header + demo.format(0, "A") + demo.format(1, "B") + query
    zero = prompts.build_prompt(fmt, ask, [], chars, 10_000).text
    if instruction:
        assert zero == instruction + "\n\n" + query


def test_fit_rules_drop_demos_as_each_reference_does():
    ask = item("Q?", ("w", "x", "y", "z"), "A", "agronomy", 9)
    dev = [item("x" * n, subject="agronomy", index=i) for i, n in enumerate((10, 40, 40, 5))]
    # Hendrycks / Baichuan: drop from the end while the whole prompt is longer than the budget.
    hend = prompts.prompt_format("hendrycks", "mmlu")
    full = prompts.build_prompt(hend, ask, dev, chars, 10_000).text
    cut = prompts.build_prompt(hend, ask, dev, chars, len(full) - 1)
    assert (
        cut.shots == 3 and cut.text == prompts.build_prompt(hend, ask, dev[:3], chars, 10**4).text
    )
    assert prompts.build_prompt(hend, ask, dev, chars, 1).shots == 0
    # CMMLU: drop every longest demo while the demos' sum reaches the room left.
    cm = prompts.prompt_format("cmmlu-official", "cmmlu")
    sizes = [len(cm.demo(d)) for d in dev]
    fixed = len(cm.header("agronomy")) + len(cm.query(ask))
    got = prompts.build_prompt(cm, ask, dev, chars, fixed + sum(sizes))  # sum == room: drop
    assert got.shots == 2 and "x" * 40 not in got.text and "x" * 10 in got.text
    assert prompts.build_prompt(cm, ask, dev, chars, fixed + sum(sizes) + 1).shots == 4
    assert prompts.build_prompt(cm, ask, dev, chars, fixed - 1).text == cm.query(ask)
    # ColossalEval: add demos while they fit, stop at the first that does not.
    co = prompts.prompt_format("colossal-2023", "cmmlu")
    room = len(co.header("agronomy")) + sum(len(co.demo(d)) for d in dev[:2])
    budget = room + len(co.query(ask) + ask.answer)  # header + 2 demos fit, the third not
    assert prompts.build_prompt(co, ask, dev, chars, budget).shots == 2
    first_too_long = prompts.build_prompt(co, ask, dev, chars, 3)
    assert first_too_long.shots == 1  # ColossalEval keeps the first demo anyway


def test_unsupported_preset_task_pairs_are_refused():
    with pytest.raises(ValueError, match="no cmmlu prompt.*cmmlu-official, colossal-2023"):
        prompts.prompt_format("hendrycks", "cmmlu")
    with pytest.raises(ValueError, match="unknown preset"):
        prompts.prompt_format("lm-eval", "mmlu")


def test_select_demos_leaves_the_asked_dev_question_out():
    dev = demo_rows(5)
    fmt = prompts.prompt_format("hendrycks", "mmlu")
    assert [d.index for d in prompts.select_demos(fmt, dev[2], dev, 5)] == [0, 1, 3, 4]
    assert [d.index for d in prompts.select_demos(fmt, dev[0], dev, 2)] == [1, 2]


# --------------------------------------------------------------------------- choice tokens


def test_llama_choice_ids_follow_the_context(llama_tok):
    """Dummy-prefix tokenizer: after "Answer:" the demos continue with `▁A` (319), after
    "答案：" with bare `A` (29909): Baichuan's `encode("A")[-1]` would give 319 for both."""
    enc = PromptEncoder(llama_tok, llama_tok.bos_token_id)
    assert llama_tok.encode("A", add_special_tokens=False) == [319]
    got = choice_context(enc, "Q\nAnswer:", " ")
    assert got.choice_ids == (319, 350, 315, 360) and (got.offset, got.variant_offset) == (0, 0)
    assert got.ids == [1, *llama_tok.encode("Q\nAnswer:", add_special_tokens=False)]
    assert choice_context(enc, "问题\n答案：", "").choice_ids == (29909, 29933, 29907, 29928)
    # ColossalEval's pair per letter: the same ids its README lists for LLaMA-2.
    assert variant_ids(enc) == [(319, 29909), (350, 29933), (315, 29907), (360, 29928)]


def test_trailing_space_prompt_scores_the_merged_letter(llama_tok):
    """ColossalEval's MMLU query ends in "Answer: " (a lone ▁ token); in context the demos put
    `▁A` after "Answer:", so chuan scores there, while the variant reads after the lone ▁."""
    enc = PromptEncoder(llama_tok)
    prompt_ids = llama_tok.encode("Q\nAnswer: ", add_special_tokens=False)
    assert llama_tok.convert_ids_to_tokens(prompt_ids[-1]) == "▁"
    got = choice_context(enc, "Q\nAnswer: ", "")
    assert got.ids == prompt_ids and (got.offset, got.variant_offset) == (1, 0)
    assert got.choice_ids == (319, 350, 315, 360) and not got.bare


class PieceTokenizer:
    """Greedy longest match over single characters (a space is `▁`) and the given pieces."""

    def __init__(self, pieces=()):
        self.vocab = {p: 1000 + i for i, p in enumerate(pieces)}
        self.unk_token_id = 0

    def encode(self, text, add_special_tokens=False):
        text, ids = text.replace(" ", "▁"), []
        while text:
            piece = next(
                (p for p in sorted(self.vocab, key=len, reverse=True) if text.startswith(p)),
                text[0],
            )
            ids.append(self.vocab[piece] if piece in self.vocab else ord(piece))
            text = text[len(piece) :]
        return ids

    def convert_tokens_to_ids(self, tokens):
        return [ord(t) for t in tokens]


def test_a_shared_lone_space_joins_the_context():
    got = choice_context(PromptEncoder(PieceTokenizer()), "Answer:", " ")
    assert got.ids == [*map(ord, "Answer:"), ord("▁")] and not got.bare
    assert got.choice_ids == tuple(map(ord, "ABCD")) and (got.offset, got.variant_offset) == (0, 1)


def test_letters_of_mixed_shapes_fall_back_to_the_bare_pieces():
    """`▁A ▁B ▁C` are pieces but `▁D` is not: rather than score D by a lone `▁`, all four are
    read as bare letters after "Answer: "."""
    enc = PromptEncoder(PieceTokenizer(["▁A", "▁B", "▁C"]))
    got = choice_context(enc, "Answer:", " ")
    assert got.bare and got.ids == [*map(ord, "Answer:"), ord("▁")]
    assert got.choice_ids == tuple(map(ord, "ABCD")) and (got.offset, got.variant_offset) == (0, 1)


def test_chat_wraps_the_prompt_and_the_letter_is_the_reply(tok, llama_tok):
    enc = PromptEncoder(tok, chat=True)
    got = choice_context(enc, "题目\n答案：", "")
    assert got.ids[0] == 195 and got.ids[-1] == 196 and got.offset == 0
    assert got.choice_ids == tuple(tok.convert_tokens_to_ids(list("ABCD")))
    assert enc.overhead() == 2
    with pytest.raises(ValueError, match="not a <reserved_N> piece"):
        choice_context(PromptEncoder(llama_tok, chat=True), "x", "")


def test_over_long_prompts_are_cut_the_presets_way(tok):
    enc = PromptEncoder(tok)
    ask = item("word " * 300, subject="law")
    left = build_request(enc, prompts.prompt_format("baichuan", "ceval"), ask, [], 0, 64)
    assert left.cut and len(left.choice.ids) == 64
    assert (
        left.choice.ids == tok.encode(prompts.prompt_format("baichuan", "ceval").query(ask))[-64:]
    )
    colossal = prompts.prompt_format("colossal-2023", "ceval")
    mid = build_request(PromptEncoder(tok, tok.bos_token_id), colossal, ask, [], 0, 100)
    whole = [tok.bos_token_id, *tok.encode(colossal.zero_shot_header("law") + colossal.query(ask))]
    half = (100 - 32) // 2  # ColossalEval keeps 32 tokens free for generation
    assert mid.cut and mid.choice.ids == whole[:half] + whole[-half:]


# --------------------------------------------------------------------------- aggregation


def test_aggregation_by_hand():
    correct = {
        "advanced_mathematics": [True, False],  # STEM, hard: 50
        "college_physics": [True, True, True, False],  # STEM, hard: 75
        "law": [False],  # Humanities: 0
        "physician": [True, True, False, False, False],  # Other: 40
    }
    macro = aggregate("ceval", correct, "macro")
    assert macro["micro"] == pytest.approx(100 * 6 / 12)
    assert macro["macro"] == pytest.approx((50 + 75 + 0 + 40) / 4) == macro["average"]
    assert macro["categories"] == pytest.approx({"STEM": 62.5, "Humanities": 0, "Other": 40})
    assert macro["avg_hard"] == pytest.approx(62.5)
    micro = aggregate("ceval", correct, "micro")
    assert micro["average"] == pytest.approx(50)
    assert micro["categories"]["STEM"] == pytest.approx(100 * 4 / 6)
    assert micro["avg_hard"] == pytest.approx(100 * 4 / 6)
    assert micro["subjects"]["physician"] == {"accuracy": pytest.approx(40), "n": 5}
    # CMMLU: a China-specific subject counts in its discipline and in China specific.
    cm = aggregate("cmmlu", {"chinese_history": [True], "arts": [False, True]}, "macro")
    assert cm["categories"] == pytest.approx({"Humanities": 75, "China specific": 100})
    assert cm["avg_hard"] is None
    mm = aggregate(
        "mmlu", {"anatomy": [True, False], "virology": [True] * 3, "law?": [False]}, "micro"
    )
    assert mm["categories"] == pytest.approx({"other": 80})  # health -> other
    assert mm["micro"] == pytest.approx(100 * 4 / 6)  # unknown subjects count overall only


# --------------------------------------------------------------------------- stub models


class StubLM(torch.nn.Module):
    """Logits from a function of each unpadded row; honours logits_to_keep like chuan's."""

    def __init__(self, vocab: int, row_logits):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.row_logits = vocab, row_logits
        self.config = SimpleNamespace(model_max_length=CONTEXT)

    def forward(self, input_ids, attention_mask, use_cache, logits_to_keep):
        rows = [
            ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True)
        ]
        # Rows are left-padded, so the kept positions are each row's last tokens.
        return SimpleNamespace(
            logits=torch.stack([self.row_logits(r)[-logits_to_keep:] for r in rows])
        )


def letter_mask(tok, letter: str) -> torch.Tensor:
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    return torch.tensor([p.replace("▁", "") == letter for p in pieces], dtype=torch.float32)


def test_a_model_that_knows_the_answers_scores_100(tok, eval_root):
    setup = McqConfig("ceval", str(eval_root / "ceval"), split="val", subjects=("law", "logic"))
    gold = {
        i.question: i.answer
        for items in mcq_data.load_split(setup.data_dir, "val", list(setup.subjects)).values()
        for i in items
    }
    masks = {letter: letter_mask(tok, letter) for letter in "ABCD"}

    def knows(ids):
        text = tok.decode(ids)
        # The asked question is the one whose last occurrence ends last (longest on a tie).
        asked = max(gold, key=lambda q: (text.rfind(q) + len(q) if q in text else -1, len(q)))
        return masks[gold[asked]].expand(len(ids), -1)

    result = evaluate_loaded(StubLM(len(tok), knows), tok, setup, progress=False, log=lambda _: 0)
    assert result["average"] == result["micro"] == result["macro"] == 100
    assert result["max_variant"]["average"] == 100 and result["max_variant"]["agreement"] == 100


def test_uniform_logits_score_the_share_of_a_answers(tok, eval_root):
    """Ties go to the earliest letter, so a model without preference answers A everywhere."""
    setup = McqConfig("ceval", str(eval_root / "ceval"), split="val", shots=0, batch_size=64)
    flat = StubLM(len(tok), lambda ids: torch.zeros(len(ids), len(tok)))
    result = evaluate_loaded(flat, tok, setup, progress=False, log=lambda _: 0)
    data = mcq_data.load_split(setup.data_dir, "val")
    share_a = {s: 100 * sum(i.answer == "A" for i in v) / len(v) for s, v in data.items()}
    assert {p["pred"] for p in result["predictions"]} == {"A"}
    assert {s: v["accuracy"] for s, v in result["subjects"].items()} == pytest.approx(share_a)
    assert result["macro"] == pytest.approx(sum(share_a.values()) / len(share_a))
    assert result["max_variant"]["macro"] == pytest.approx(result["macro"])


# --------------------------------------------------------------------------- agreement


def fit_drop_last(tok, header, demos, query):
    """Hendrycks' loop: fewer demos while the prompt is longer than the context."""
    for k in range(len(demos), -1, -1):
        text = header + "".join(demos[:k]) + query
        if len(tok.encode(text)) <= CONTEXT:
            break
    return text


def reference_hendrycks(tok, rows, subject, row):
    """Hendrycks' evaluate.py, evaluating dev: the asked row is not among its demos."""

    def fmt(r, answer):
        text = r.question + "".join(f"\n{L}. {c}" for L, c in zip("ABCD", r.choices, strict=True))
        return text + "\nAnswer:" + (f" {r.answer}\n\n" if answer else "")

    header = "The following are multiple choice questions (with answers) about {}.\n\n".format(
        "".join(" " + w for w in subject.split("_"))
    )
    demos = [fmt(r, True) for r in rows if r is not row][:5]
    return fit_drop_last(tok, header, demos, fmt(row, False)), "▁"


def reference_baichuan_ceval(tok, dev, name, row):
    """Baichuan-7B evaluate_zh.py: dev shuffled by `datasets` with seed 123."""
    shuffled = datasets.Dataset.from_list([r.__dict__ for r in dev]).shuffle(seed=123)

    def fmt(r, answer):
        choices = "\n".join(f"{L}. {c}" for L, c in zip("ABCD", r["choices"], strict=True))
        return f"{r['question']}\n{choices}\n答案：{r['answer'].strip().upper() if answer else ''}"

    header = f"以下是中国关于{name}考试的单项选择题，请选出其中的正确答案。\n"
    demos = ["\n" + fmt(r, True) for r in list(shuffled)[:5]]
    return fit_drop_last(tok, header, demos, "\n" + fmt(row.__dict__, False)), ""


def reference_cmmlu(tok, rows, name, row):
    """CMMLU mp_utils.gen_prompt on dev, the asked row left out of its own demos."""

    def fmt(r, answer):
        text = (
            "题目："
            + r.question
            + "".join(f"\n{L}. {c}" for L, c in zip("ABCD", r.choices, strict=True))
        )
        return text + "\n答案是：" + (f"{r.answer}\n\n" if answer else "")

    prompt = f"以下是关于{name}的单项选择题，请直接给出正确答案的选项。\n\n"
    end = fmt(row, False)
    fixed = len(tok.encode(prompt) + tok.encode(end))
    pool = [(e, tok.encode(e)) for e in (fmt(r, True) for r in rows if r is not row)]
    while pool and sum(len(e[1]) for e in pool) >= CONTEXT - fixed:
        longest = max(len(e[1]) for e in pool)
        pool = [e for e in pool if len(e[1]) != longest]
    return prompt + "".join(e[0] for e in pool) + end, ""


def reference_predictions(model, tok, build, data, dev) -> dict:
    """One unbatched forward per question; the letter ids are the pieces the demos put after
    the prompt: `▁A` after "Answer:" (a space, then the letter), bare `A` after "答案："."""
    preds = {}
    for subject, rows in data.items():
        for row in rows:
            text, space = build(subject, rows, dev.get(subject), row)
            letters = tok.convert_tokens_to_ids([space + L for L in "ABCD"])
            if tok.unk_token_id in letters:  # e.g. no `▁D`: bare letters after the space
                text, letters = (
                    text + space.replace("▁", " "),
                    tok.convert_tokens_to_ids(list("ABCD")),
                )
            ids = tok.encode(text)[-CONTEXT:]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            preds[(subject, row.index)] = "ABCD"[int(logits[letters].argmax())]
    return preds


# evaluate_zh.py's task2desc, where it differs from C-Eval's subject_mapping.json (no 体系).
BAICHUAN_NAMES = {"mao_zedong_thought": "毛泽东思想和中国特色社会主义理论概论"}

CASES = {
    "mmlu": (
        ("dev", ["abstract_algebra", "high_school_geography", "world_religions"]),
        lambda tok: lambda subject, rows, dev, row: reference_hendrycks(tok, rows, subject, row),
    ),
    "ceval": (
        ("val", ["computer_network", "mao_zedong_thought"]),
        lambda tok: (
            lambda subject, rows, dev, row: reference_baichuan_ceval(
                tok,
                dev,
                BAICHUAN_NAMES.get(subject, subjects.chinese_name("ceval", subject)),
                row,
            )
        ),
    ),
    "cmmlu": (
        ("dev", ["agronomy", "chinese_history", "machine_learning", "virology"]),
        lambda tok: (
            lambda subject, rows, dev, row: reference_cmmlu(
                tok, rows, subjects.chinese_name("cmmlu", subject), row
            )
        ),
    ),
}


@pytest.mark.parametrize("task", list(CASES))
def test_cli_agrees_with_an_independent_reference(task, model_dir, tok, eval_root, tmp_path):
    (split, chosen), reference = CASES[task]
    out = tmp_path / "r.json"
    run_cli(
        ["mcq", str(model_dir), "--task", task, "--data", str(eval_root / task), "--split", split,
         "--subjects", *chosen, "--batch-size", "5", "--json", str(out), "--quiet"]
    )  # fmt: skip
    result = json.loads(out.read_text("utf-8"))
    data = mcq_data.load_split(eval_root / task, split, chosen)
    dev = mcq_data.load_split(eval_root / task, "dev", chosen)
    model = load_model(model_dir, device="cpu")
    expected = reference_predictions(model, tok, reference(tok), data, dev)
    got = {(p["subject"], p["index"]): p["pred"] for p in result["predictions"]}
    assert got == expected
    assert len(set(got.values())) > 1  # the model does not answer one letter everywhere
    gold = {(s, i.index): i.answer for s, v in data.items() for i in v}
    assert [p["answer"] for p in result["predictions"]] == [gold[k] for k in got]


def test_cli_writes_the_json_schema_and_report(model_dir, eval_root, tmp_path, capsys):
    out = tmp_path / "res" / "ceval.json"
    run_cli(
        ["mcq", str(model_dir), "--task", "ceval", "--data", str(eval_root / "ceval"),
         "--subjects", "law", "advanced_mathematics", "--shots", "2", "--json", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "split: val (the first of test, val, dev present" in printed
    assert "| **average, macro (headline)** | 2 |" in printed and "Avg(Hard)" in printed
    result = json.loads(out.read_text("utf-8"))
    required = {"task", "shots", "average", "categories", "subjects", "predictions"}
    extra = {"preset", "split", "micro", "macro", "avg_hard", "model", "headline", "max_variant"}
    assert required | extra <= set(result)
    assert (result["task"], result["shots"], result["split"]) == ("ceval", 2, "val")
    assert result["preset"] == "baichuan" and result["model"] == str(model_dir)
    assert set(result["categories"]) == {"STEM", "Humanities"}
    assert set(result["subjects"]) == {"law", "advanced_mathematics"}
    assert all(set(v) == {"accuracy", "n"} for v in result["subjects"].values())
    assert all(set(p) == {"subject", "index", "pred", "answer"} for p in result["predictions"])
    assert len(result["predictions"]) == sum(v["n"] for v in result["subjects"].values())
    assert result["average"] == result["macro"]
    assert result["avg_hard"] == result["subjects"]["advanced_mathematics"]["accuracy"]
    assert out.with_suffix(".md").read_text("utf-8").startswith("# ceval val, 2-shot")
    assert not list(out.parent.glob(".*tmp*"))


def test_cli_chat_and_help(model_dir, eval_root, tmp_path, capsys):
    out = tmp_path / "chat.json"
    run_cli(
        ["mcq", str(model_dir), "--task", "cmmlu", "--data", str(eval_root / "cmmlu"),
         "--subjects", "arts", "--chat", "--shots", "1", "--json", str(out), "--quiet"]
    )  # fmt: skip
    result = json.loads(out.read_text("utf-8"))
    assert result["chat"] is True and result["split"] == "dev" and result["questions"] == 5
    assert "each question is left out of its own" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run_cli(["mcq", "--help"])
    text = capsys.readouterr().out
    flags = "task data split shots subjects preset chat batch-size max-length json device dtype"
    assert all(f"--{flag}" in text for flag in [*flags.split(), "quiet"])


def test_demos_need_a_dev_split(tok, tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "law_val.csv").write_text(
        "id,question,A,B,C,D,answer\n0,q,a,b,c,d,B\n", encoding="utf-8"
    )
    flat = StubLM(len(tok), lambda ids: torch.zeros(len(ids), len(tok)))
    with pytest.raises(FileNotFoundError, match="demos from .*dev.*--shots 0"):
        evaluate_loaded(flat, tok, McqConfig("ceval", str(tmp_path)), log=lambda _: 0)
    zero = evaluate_loaded(
        flat, tok, McqConfig("ceval", str(tmp_path), shots=0), progress=False, log=lambda _: 0
    )
    assert zero["predictions"] == [{"subject": "law", "index": 0, "pred": "A", "answer": "B"}]
    assert zero["average"] == 0 and zero["mean_shots"] == 0


@pytest.mark.parametrize("preset", ["tiny", "tiny-alibi"])
def test_shared_prefix_cache_scores_like_whole_prompts(preset, tokenizer_dir, eval_root, tmp_path):
    """chuan models run each subject's common prompt prefix once and only the questions' own
    tokens per batch; letters must match running every prompt whole (RoPE and ALiBi)."""
    init_model_dir(
        tmp_path / "m", preset, tokenizer_dir=tokenizer_dir, seed=2, initializer_range=0.2
    )
    model, tok = load_model(tmp_path / "m", device="cpu"), load_saved_tokenizer(tmp_path / "m")
    fmt = prompts.prompt_format("baichuan", "ceval")
    data = mcq_data.load_split(eval_root / "ceval", "val", ["logic", "college_physics"])
    dev = mcq_data.load_split(eval_root / "ceval", "dev", list(data))
    enc = PromptEncoder(tok)
    requests = build_requests(enc, fmt, data, dev, 5, CONTEXT, progress=False)
    run = {
        share: score_requests(
            model, requests, variant_ids(enc), batch_size=4, pad_id=0, share_prefix=share,
            progress=False,
        )
        for share in (True, False)
    }  # fmt: skip
    assert run[True] == run[False]
    assert max(_prefix_length(g) for g in _prefix_groups(requests)) > 100  # it is used
