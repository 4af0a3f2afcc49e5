"""Rebuild `src/chuan/assets/` from the freely licensed texts in `../shared/data/text/`.

Only public-domain, MIT and CC BY material goes into the package (see src/chuan/assets/README.md):

- `sample/`: the first chapters of the Old Testament in the King James Version and the 1919
  Chinese Union Version (Simplified), one document per chapter; classical Chinese poetry from
  the MIT `chinese-poetry` collection, one document per poem or chapter; *Botchan* (public
  domain), one document per chapter.
- `sft/` and `preference/`: translation instructions made from Tatoeba sentence pairs
  (CC BY 2.0 FR, each record keeps its attribution).
- `quiz/`: a small multiple-choice quiz in CMMLU's layout, written from the sample itself
  (which book a passage is from; who wrote a Tang poem), so a model's score can move with
  what it learned from the sample.

    python scripts/make_sample_corpus.py [--shared ../shared/data] [--chapters 300]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
from collections import OrderedDict
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "src" / "chuan" / "assets"
POETRY = ("tangshisanbaishou.json", "songci_300.json", "lunyu.json")
BOOKS_ZH = {
    "Genesis": "创世记",
    "Exodus": "出埃及记",
    "Leviticus": "利未记",
    "Numbers": "民数记",
    "Deuteronomy": "申命记",
    "Joshua": "约书亚记",
    "Judges": "士师记",
    "Ruth": "路得记",
    "I Samuel": "撒母耳记上",
    "II Samuel": "撒母耳记下",
    "I Kings": "列王纪上",
}
LETTERS = "ABCD"


def bible_chapters(tsv: Path, chapters: int) -> tuple[list[dict], list[dict]]:
    """English and Chinese documents, one per chapter, for the first `chapters` chapters."""
    grouped: OrderedDict[str, list[tuple[str, str]]] = OrderedDict()
    for line in tsv.read_text(encoding="utf-8").splitlines()[1:]:
        ref, english, chinese, _ = line.split("\t")
        chapter = ref.rsplit(":", 1)[0]
        if chapter not in grouped and len(grouped) == chapters:
            break
        grouped.setdefault(chapter, []).append((english, chinese))
    en, zh = [], []
    for chapter, verses in grouped.items():
        en.append(
            {"id": f"kjv/{chapter}", "text": " ".join(e for e, _ in verses if e), "category": "en"}
        )
        zh.append(
            {"id": f"cuvs/{chapter}", "text": "".join(c for _, c in verses if c), "category": "zh"}
        )
    return en, zh


def poems(folder: Path) -> list[dict]:
    """Poems and 论语 chapters as documents: title line, then the lines of the text."""
    docs = []
    for name in POETRY:
        data = json.loads((folder / name).read_text(encoding="utf-8"))
        if isinstance(data, dict):  # 唐诗三百首: {title, content: [{type, content: [poem]}]}
            data = [poem for group in data["content"] for poem in group["content"]]
        for i, item in enumerate(data):
            title = item.get("title") or item.get("rhythmic") or item.get("chapter") or ""
            author = item.get("author")
            head = f"{title}（{author}）" if author else title
            text = "\n".join([head, *item["paragraphs"]]).strip()
            docs.append({"id": f"{Path(name).stem}/{i}", "text": text, "category": "zh"})
    return docs


def botchan_chapters(path: Path) -> list[dict]:
    """*Botchan* without the Project Gutenberg header and licence, one document per chapter."""
    text = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    body = text.split("*** START OF THIS PROJECT GUTENBERG EBOOK", 1)[1].split("\n", 1)[1]
    body = body.split("*** END OF THIS PROJECT GUTENBERG EBOOK", 1)[0]
    chapters = [c for c in body.split("\nCHAPTER ")[1:] if c.strip()]
    docs = []
    for i, chapter in enumerate(chapters, start=1):
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", chapter.split("\n", 1)[1])]
        text = "\n".join(p for p in paragraphs if p)
        docs.append({"id": f"botchan/{i}", "text": text, "category": "en"})
    return docs


def tatoeba_pairs(path: Path) -> list[tuple[str, str, str]]:
    """(english, chinese, attribution) triples: a BOM, then three tab-separated columns."""
    rows = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        if not line.strip():
            continue
        english, chinese, attribution = line.split("\t")
        rows.append((english, chinese, attribution))
    return rows


def translation_sets(
    pairs: list[tuple[str, str, str]], sft_size: int, preference_size: int, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Alpaca-style translation instructions in both directions, and preference records
    whose rejected answer is the translation of a different sentence."""
    rng = random.Random(seed)
    longer = [p for p in pairs if len(p[0].split()) >= 4]
    picked = rng.sample(longer, sft_size + preference_size)
    directions = (
        ("Translate into Chinese.", 0, 1),
        ("把下面的句子翻译成英文。", 1, 0),
    )
    sft = []
    for i, pair in enumerate(picked[:sft_size]):
        instruction, src, tgt = directions[i % 2]
        sft.append(
            {
                "instruction": instruction,
                "input": pair[src],
                "output": pair[tgt],
                "meta": {"source": "tatoeba", "attribution": pair[2]},
            }
        )
    preference = []
    held = picked[sft_size:]
    for i, pair in enumerate(held):
        instruction, src, tgt = directions[i % 2]
        other = held[(i + 1) % len(held)]
        preference.append(
            {
                "instruction": instruction,
                "input": pair[src],
                "chosen": pair[tgt],
                "rejected": other[tgt],
                "meta": {"source": "tatoeba", "attribution": f"{pair[2]}; {other[2]}"},
            }
        )
    return sft, preference


def mcq_rows(items: list[tuple[str, str]], pool: list[str], rng: random.Random) -> list[list]:
    """CMMLU rows `[index, question, A, B, C, D, answer]`: the true answer among three
    distractors drawn from `pool`."""
    rows = []
    for index, (question, answer) in enumerate(items):
        options = rng.sample([p for p in pool if p != answer], 3) + [answer]
        rng.shuffle(options)
        rows.append([index, question, *options, LETTERS[options.index(answer)]])
    return rows


def quiz(bible_zh: list[dict], poetry_file: Path, dev: int, test: int, seed: int = 0) -> dict:
    """Two quiz subjects from the sample: which book a passage opens, who wrote a Tang poem."""
    rng = random.Random(seed)
    passages = []
    for doc in bible_zh:
        book = doc["id"].split("/", 1)[1].rsplit(" ", 1)[0]
        opening = doc["text"].replace("\u3000", "")[:40]
        passages.append((f"“{opening}……”这段经文出自哪一卷？", BOOKS_ZH[book]))
    data = json.loads(poetry_file.read_text(encoding="utf-8"))
    tang = [poem for group in data["content"] for poem in group["content"]]
    poems_asked = [(f"《{p['chapter']}》的作者是谁？", p["author"]) for p in tang if p["author"]]
    subjects = {}
    for name, items, pool in (
        ("圣经书卷", passages, list(BOOKS_ZH.values())),
        ("唐诗作者", poems_asked, sorted({a for _, a in poems_asked})),
    ):
        chosen = rng.sample(items, dev + test)
        subjects[name] = {
            "dev": mcq_rows(chosen[:dev], pool, rng),
            "test": mcq_rows(chosen[dev:], pool, rng),
        }
    return subjects


def write_quiz(folder: Path, subjects: dict) -> None:
    for name, splits in subjects.items():
        for split, rows in splits.items():
            path = folder / split / f"{name}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["", "Question", "A", "B", "C", "D", "Answer"])
                writer.writerows(rows)
            print(f"{path}: {len(rows)} questions")


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{path}: {len(records)} records, {path.stat().st_size / 1e6:.2f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser.add_argument("--chapters", type=int, default=300)
    args = parser.parse_args()
    text = args.shared / "text"
    poetry = text / "zh_classical" / "chinese_poetry"
    en, zh = bible_chapters(text / "parallel" / "bible_kjv_cuvs_wenli.tsv", args.chapters)
    write_jsonl(ASSETS / "sample" / "bible_kjv_en.jsonl", en)
    write_jsonl(ASSETS / "sample" / "bible_cuvs_zh.jsonl", zh)
    write_jsonl(ASSETS / "sample" / "poetry_zh.jsonl", poems(poetry))
    botchan = botchan_chapters(text / "en" / "botchan.txt")
    write_jsonl(ASSETS / "sample" / "botchan_en.jsonl", botchan)
    pairs = tatoeba_pairs(text / "parallel" / "tatoeba_cmn_eng.txt")
    sft, preference = translation_sets(pairs, sft_size=1000, preference_size=300)
    write_jsonl(ASSETS / "sft" / "translate_zh_en.jsonl", sft)
    write_jsonl(ASSETS / "preference" / "translate_zh_en.jsonl", preference)
    write_quiz(ASSETS / "quiz", quiz(zh, poetry / "tangshisanbaishou.json", dev=5, test=40))


if __name__ == "__main__":
    main()
