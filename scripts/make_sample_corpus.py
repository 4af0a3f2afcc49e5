"""Rebuild `src/chuan/assets/sample/` from the freely licensed texts in `../shared/data/text/`.

Only public-domain and MIT material goes into the package (see src/chuan/assets/README.md):
the first chapters of the Old Testament in the King James Version and the 1919 Chinese Union
Version (Simplified), one document per chapter, and classical Chinese poetry from the MIT
`chinese-poetry` collection, one document per poem or chapter.

    python scripts/make_sample_corpus.py [--shared ../shared/data] [--chapters 300]
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "src" / "chuan" / "assets" / "sample"
POETRY = ("tangshisanbaishou.json", "songci_300.json", "lunyu.json")


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


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{path}: {len(records)} documents, {path.stat().st_size / 1e6:.2f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser.add_argument("--chapters", type=int, default=300)
    args = parser.parse_args()
    text = args.shared / "text"
    en, zh = bible_chapters(text / "parallel" / "bible_kjv_cuvs_wenli.tsv", args.chapters)
    ASSETS.mkdir(parents=True, exist_ok=True)
    write_jsonl(ASSETS / "bible_kjv_en.jsonl", en)
    write_jsonl(ASSETS / "bible_cuvs_zh.jsonl", zh)
    write_jsonl(ASSETS / "poetry_zh.jsonl", poems(text / "zh_classical" / "chinese_poetry"))


if __name__ == "__main__":
    main()
