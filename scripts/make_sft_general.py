"""Write `src/chuan/assets/sft/general_zh_en.jsonl` from the bundled sample itself.

General (non-translation) bilingual instructions, alpaca records `{instruction, input, output,
meta}`, made from the public-domain and MIT documents of `src/chuan/assets/sample/` (built by
`scripts/make_sample_corpus.py`), so the set is as free as they are:

- 唐诗三百首 / 宋词三百首: who wrote it, its title (or 词牌), its first line, the next line;
- 论语: which 篇 a saying is from, the saying that follows;
- the KJV and Chinese Union Version chapters: which book a passage is from (also asked across
  the languages), the next sentence;
- *Botchan*: the next sentence of a passage;
- a few identity questions, written for this repository.

Instructions are half Chinese, half English; answers are at most 200 characters (Chinese
question and answer at most 100 and 80), so a `tiny` model at `max_length` 256 sees them
whole. Every record's `meta` names its task, its source file and document id, and the
licence. Seeded: the same sample gives the same file.

    python scripts/make_sft_general.py [--seed 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

from make_sample_corpus import ASSETS, BOOKS_ZH, write_jsonl

SAMPLE = ASSETS / "sample"
OUT = ASSETS / "sft" / "general_zh_en.jsonl"
LICENCES = {
    "poetry_zh.jsonl": "MIT, (c) 2016 JackeyGao (chinese-poetry)",
    "bible_kjv_en.jsonl": "public domain",
    "bible_cuvs_zh.jsonl": "public domain",
    "botchan_en.jsonl": "public domain",
}
MAX_OUTPUT = 200  # characters of any answer
MAX_INPUT_EN = 320
MAX_INPUT_ZH, MAX_OUTPUT_ZH = 100, 80  # Chinese takes about 3x the tokens per character

# Written for this repository (Apache-2.0, as chuan): what a model fine-tuned on these
# records says about itself.
IDENTITY = [
    (
        "Who are you?",
        "I am an assistant fine-tuned with chuan, a toolkit for Baichuan-style bilingual "
        "language models. I can answer in English or Chinese.",
    ),
    (
        "What is your name?",
        "I have no name of my own: I am a small assistant model fine-tuned with chuan.",
    ),
    (
        "What can you do?",
        "I can translate between Chinese and English, name the author or title of a "
        "classical Chinese poem, and continue a verse of the Bible or a line of poetry.",
    ),
    ("Which languages do you speak?", "Chinese and English."),
    (
        "Who made you?",
        "I was fine-tuned with chuan, an open-source toolkit, on a small freely licensed "
        "bilingual data set.",
    ),
    ("Are you a human?", "No. I am a small language model fine-tuned with chuan."),
    ("Hello!", "Hello! I am an assistant fine-tuned with chuan. How can I help you?"),
    (
        "What were you trained on?",
        "Public-domain and MIT-licensed text: Bible chapters in English and Chinese, Tang and "
        "Song poetry, the Analects, the novel Botchan, and Tatoeba sentence pairs.",
    ),
    (
        "Can you look things up on the internet?",
        "No. I only know what I learned in training, and I can be wrong.",
    ),
    (
        "Are your answers always right?",
        "No. I am a very small model trained for minutes; check anything that matters.",
    ),
    (
        "你是谁？",
        "我是用 chuan 微调的助手。chuan 是训练百川式中英双语大模型的工具包。"
        "我可以用中文或英文回答。",
    ),
    ("你叫什么名字？", "我没有自己的名字，我是一个用 chuan 微调的小型助手模型。"),
    (
        "你能做什么？",
        "我可以在中文和英文之间翻译，说出古诗的作者和题目，接着写出圣经经文或诗句的下一句。",
    ),
    ("你会说哪些语言？", "中文和英文。"),
    ("是谁训练了你？", "我是用开源工具包 chuan 在一个可以自由使用的小型中英双语数据集上微调的。"),
    ("你是人吗？", "不是。我是一个用 chuan 微调的小型语言模型。"),
    ("你好！", "你好！我是用 chuan 微调的助手，有什么可以帮你的吗？"),
    (
        "你是用什么数据训练的？",
        "公有领域和 MIT 许可的文本：中英文圣经章节、唐诗宋词、《论语》、小说《少爷》，"
        "以及 Tatoeba 的句对。",
    ),
    ("你能上网查资料吗？", "不能。我只知道训练时学到的东西，而且可能会出错。"),
    ("你的回答总是对的吗？", "不是。我是一个只训练了几分钟的很小的模型，重要的事情请核实。"),
]


def read_sample(name: str) -> list[dict]:
    return [json.loads(line) for line in (SAMPLE / name).read_text(encoding="utf-8").splitlines()]


def record(task: str, instruction: str, input_: str, output: str, file: str, doc: str) -> dict:
    return {
        "instruction": instruction,
        "input": input_,
        "output": output,
        "meta": {
            "task": task,
            "source": f"sample/{file}",
            "document": doc,
            "licence": LICENCES[file],
        },
    }


def zh_fits(input_: str, output: str) -> bool:
    return len(input_) <= MAX_INPUT_ZH and len(output) <= MAX_OUTPUT_ZH


def en_fits(input_: str, output: str) -> bool:
    return len(input_) <= MAX_INPUT_EN and len(output) <= MAX_OUTPUT


# -- splitting the sample ----------------------------------------------------------------------


def poem_parts(doc: dict) -> tuple[str, str | None, list[str]]:
    """(title, author or None, lines) of a poem or 论语 document."""
    head, body = doc["text"].split("\n", 1)
    match = re.fullmatch(r"(.+)（(.+)）", head)
    title, author = match.groups() if match else (head, None)
    body = re.sub(r"[（(][^）)]*[）)]", "", body)  # editors' notes: "(明年 一作：年年)"
    return title, author, [line.strip() for line in body.split("\n") if line.strip()]


def english_sentences(text: str) -> list[str]:
    text = " ".join(text.replace("¶", " ").split())
    return [s for s in re.split(r"(?<=[.?!])\s+(?=[A-Z\"'])|(?<=[.?!][\"'])\s+", text) if s]


def chinese_sentences(text: str) -> list[str]:
    text = text.replace("\u3000", "")
    return [s for s in re.findall(r".+?(?:[。！？][」』]*|$)", text) if s.strip()]


def bible_book(doc_id: str) -> str:
    """`kjv/I Samuel 3` -> `I Samuel`."""
    return doc_id.split("/", 1)[1].rsplit(" ", 1)[0]


def passage(sentences: list[str], rng: random.Random, limit: int, join: str) -> str | None:
    """One or two consecutive sentences from a random place, within `limit` characters."""
    start = rng.randrange(len(sentences))
    text = sentences[start]
    if start + 1 < len(sentences) and len(text) < limit // 3:
        text = join.join([text, sentences[start + 1]])
    return text if len(text) <= limit else None


def next_pair(items: list[str], rng: random.Random) -> tuple[str, str] | None:
    """A random item and the one after it."""
    if len(items) < 2:
        return None
    i = rng.randrange(len(items) - 1)
    return items[i], items[i + 1]


# -- the tasks: each makes one record from a random document, or None when it does not fit ----

Task = Callable[[random.Random], dict | None]


def poetry_tasks(poetry: list[dict]) -> dict[str, tuple[Task, int]]:
    tang = [d for d in poetry if d["id"].startswith("tangshisanbaishou/")]
    song = [d for d in poetry if d["id"].startswith("songci_300/")]
    lunyu = [d for d in poetry if d["id"].startswith("lunyu/")]
    file = "poetry_zh.jsonl"

    def author_zh(rng):
        doc = rng.choice(tang + song)
        title, author, lines = poem_parts(doc)
        kind = "诗" if doc in tang else "词"
        body = "\n".join(lines)
        q = rng.choice([f"这首{kind}的作者是谁？", f"下面这首{kind}是谁写的？"])
        out = f"这首{kind}是{author}写的。"
        return record("poem_author", q, body, out, file, doc["id"]) if zh_fits(body, out) else None

    def author_en(rng):
        doc = rng.choice(tang)
        title, author, lines = poem_parts(doc)
        body = "\n".join(lines)
        q = rng.choice(["Who wrote this poem?", "Who is the author of this poem?"])
        out = f"It was written by {author}."
        return record("poem_author", q, body, out, file, doc["id"]) if zh_fits(body, out) else None

    def title_zh(rng):
        doc = rng.choice(tang)
        title, author, lines = poem_parts(doc)
        body = "\n".join(lines)
        q = rng.choice(["这首诗的题目是什么？", "请说出这首诗的题目。"])
        out = f"这首诗的题目是《{title}》。"
        return record("poem_title", q, body, out, file, doc["id"]) if zh_fits(body, out) else None

    def title_en(rng):
        doc = rng.choice(tang)
        title, author, lines = poem_parts(doc)
        body = "\n".join(lines)
        q = rng.choice(["Give the title of this poem.", "What is this poem called?"])
        out = f"The poem is 《{title}》, by {author}."
        return record("poem_title", q, body, out, file, doc["id"]) if zh_fits(body, out) else None

    def tune_zh(rng):
        doc = rng.choice(song)
        title, author, lines = poem_parts(doc)
        body = "\n".join(lines)
        q = "这首词的词牌是什么？"
        out = f"词牌是《{title}》，作者是{author}。"
        return record("ci_tune", q, body, out, file, doc["id"]) if zh_fits(body, out) else None

    def first_line_zh(rng):
        doc = rng.choice(tang)
        title, author, lines = poem_parts(doc)
        q = rng.choice(
            [f"把{author}的《{title}》的第一句写出来。", f"《{title}》（{author}）的第一句是什么？"]
        )
        return record("poem_first_line", q, "", lines[0], file, doc["id"]) if lines else None

    def first_line_en(rng):
        doc = rng.choice(tang)
        title, author, lines = poem_parts(doc)
        q = f"Write out the first line of the poem 《{title}》 by {author}."
        return record("poem_first_line", q, "", lines[0], file, doc["id"]) if lines else None

    def next_line_zh(rng):
        doc = rng.choice(tang + song)
        pair = next_pair(poem_parts(doc)[2], rng)
        if pair is None:
            return None
        q = rng.choice(["接着写出下一句。", "这句诗的下一句是什么？"])
        return record("poem_next_line", q, *pair, file, doc["id"]) if zh_fits(*pair) else None

    def next_line_en(rng):
        doc = rng.choice(tang)
        pair = next_pair(poem_parts(doc)[2], rng)
        if pair is None:
            return None
        q = rng.choice(["Continue this poem with its next line.", "What line comes next?"])
        return record("poem_next_line", q, *pair, file, doc["id"]) if zh_fits(*pair) else None

    def lunyu_chapter_zh(rng):
        doc = rng.choice(lunyu)
        title, _, lines = poem_parts(doc)
        saying = rng.choice(lines)
        q = "这段话出自《论语》的哪一篇？"
        out = f"出自《论语·{title}》。"
        return (
            record("analects_chapter", q, saying, out, file, doc["id"])
            if zh_fits(saying, out)
            else None
        )

    def lunyu_next_zh(rng):
        doc = rng.choice(lunyu)
        pair = next_pair(poem_parts(doc)[2], rng)
        if pair is None:
            return None
        q = "这是《论语》中的一章，请背出它的下一章。"
        return record("analects_next", q, *pair, file, doc["id"]) if zh_fits(*pair) else None

    return {
        "poem_author_zh": (author_zh, 90),
        "poem_author_en": (author_en, 80),
        "poem_title_zh": (title_zh, 50),
        "poem_title_en": (title_en, 60),
        "ci_tune_zh": (tune_zh, 30),
        "poem_first_line_zh": (first_line_zh, 55),
        "poem_first_line_en": (first_line_en, 40),
        "poem_next_line_zh": (next_line_zh, 70),
        "poem_next_line_en": (next_line_en, 40),
        "analects_chapter_zh": (lunyu_chapter_zh, 30),
        "analects_next_zh": (lunyu_next_zh, 20),
    }


def bible_tasks(kjv: list[dict], cuvs: list[dict]) -> dict[str, tuple[Task, int]]:
    en = [(d, english_sentences(d["text"])) for d in kjv]
    zh = [(d, chinese_sentences(d["text"])) for d in cuvs]

    def book_en(rng):
        doc, sentences = rng.choice(en)
        text = passage(sentences, rng, MAX_INPUT_EN, " ")
        book = bible_book(doc["id"])
        q = rng.choice(
            [
                "Which book of the Bible does this passage come from?",
                "Name the book of the Bible this verse is from.",
            ]
        )
        out = f"It comes from the book of {book}."
        return record("bible_book", q, text, out, "bible_kjv_en.jsonl", doc["id"]) if text else None

    def book_zh(rng):
        doc, sentences = rng.choice(zh)
        text = passage(sentences, rng, MAX_INPUT_ZH, "")
        book = BOOKS_ZH[bible_book(doc["id"])]
        q = rng.choice(["这段经文出自圣经的哪一卷？", "下面这段话出自圣经哪一卷书？"])
        out = f"出自《{book}》。"
        return (
            record("bible_book", q, text, out, "bible_cuvs_zh.jsonl", doc["id"]) if text else None
        )

    def book_en_of_zh(rng):
        doc, sentences = rng.choice(zh)
        text = passage(sentences, rng, MAX_INPUT_ZH, "")
        book = bible_book(doc["id"])
        q = "Which book of the Bible is this Chinese passage from? Answer in English."
        out = f"It is from {book} (《{BOOKS_ZH[book]}》)."
        return (
            record("bible_book", q, text, out, "bible_cuvs_zh.jsonl", doc["id"]) if text else None
        )

    def book_zh_of_en(rng):
        doc, sentences = rng.choice(en)
        text = passage(sentences, rng, MAX_INPUT_EN, " ")
        book = bible_book(doc["id"])
        q = "这段英文经文出自圣经的哪一卷？请用中文回答。"
        out = f"出自《{BOOKS_ZH[book]}》（{book}）。"
        return record("bible_book", q, text, out, "bible_kjv_en.jsonl", doc["id"]) if text else None

    def next_en(rng):
        doc, sentences = rng.choice(en)
        pair = next_pair(sentences, rng)
        if pair is None or not en_fits(*pair):
            return None
        q = rng.choice(["Continue this verse.", "What comes next in this passage?"])
        return record("bible_next", q, *pair, "bible_kjv_en.jsonl", doc["id"])

    def next_zh(rng):
        doc, sentences = rng.choice(zh)
        pair = next_pair(sentences, rng)
        if pair is None or not zh_fits(*pair):
            return None
        q = rng.choice(["接着写出这段经文的下一句。", "这句经文后面是什么？"])
        return record("bible_next", q, *pair, "bible_cuvs_zh.jsonl", doc["id"])

    return {
        "bible_book_en": (book_en, 70),
        "bible_book_zh": (book_zh, 60),
        "bible_book_en_of_zh": (book_en_of_zh, 30),
        "bible_book_zh_of_en": (book_zh_of_en, 30),
        "bible_next_en": (next_en, 70),
        "bible_next_zh": (next_zh, 55),
    }


def botchan_tasks(botchan: list[dict]) -> dict[str, tuple[Task, int]]:
    chapters = [(d, english_sentences(d["text"])) for d in botchan]

    def next_en(rng):
        doc, sentences = rng.choice(chapters)
        pair = next_pair(sentences, rng)
        if pair is None or not en_fits(*pair) or min(map(len, pair)) < 40:
            return None
        q = rng.choice(
            ["Continue this passage from Botchan.", "What is the next sentence of this passage?"]
        )
        return record("botchan_next", q, *pair, "botchan_en.jsonl", doc["id"])

    return {"botchan_next_en": (next_en, 100)}


def identity_records() -> list[dict]:
    return [
        {
            "instruction": question,
            "input": "",
            "output": answer,
            "meta": {
                "task": "identity",
                "source": "chuan",
                "licence": "Apache-2.0 (written for this repository)",
            },
        }
        for question, answer in IDENTITY
    ]


def general_set(seed: int = 0) -> list[dict]:
    """`count` distinct records of every task and the identity records, shuffled together."""
    rng = random.Random(seed)
    tasks = {
        **poetry_tasks(read_sample("poetry_zh.jsonl")),
        **bible_tasks(read_sample("bible_kjv_en.jsonl"), read_sample("bible_cuvs_zh.jsonl")),
        **botchan_tasks(read_sample("botchan_en.jsonl")),
    }
    records, seen = identity_records(), set()
    for name, (make, count) in tasks.items():
        wanted, made, tries = count, 0, 0
        while made < wanted:
            tries += 1
            if tries > 100 * wanted:
                raise RuntimeError(f"{name}: only {made} of {wanted} records fit the limits")
            rec = make(rng)
            if rec is None or (rec["instruction"], rec["input"]) in seen:
                continue
            assert len(rec["output"]) <= MAX_OUTPUT, rec
            seen.add((rec["instruction"], rec["input"]))
            records.append(rec)
            made += 1
    rng.shuffle(records)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    records = general_set(seed=args.seed)
    write_jsonl(args.out, records)
    en = sum(bool(re.search(r"[A-Za-z]", r["instruction"])) for r in records)
    print(f"instructions: {len(records) - en} Chinese, {en} English")


if __name__ == "__main__":
    main()
