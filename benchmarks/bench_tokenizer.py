"""Tokenizer benchmarks, printed as markdown tables.

1. Compression on held-out Chinese and English text, never used to train the chuan
   tokenizers: the last 10% of lines of the Debian Reference (zh-cn and its English original,
   document-level parallel), the last 10% of Old Testament verses (和合本 and KJV), and the
   Alpaca demo instructions (`sft/alpaca_{zh,en}_demo.json`, a domain absent from all
   training text). Rows:
   - LLaMA-2 (32,000 pieces), Chinese-LLaMA-2 (55,296);
   - Baichuan-7B (64,000), rebuilt from llama.cpp's vocab GGUF by `baichuan_vocab.py` with
     Baichuan 1's dummy prefix on;
   - `chuan-bpe-64k`: `train_tokenizer` (Baichuan 2 settings) on the rest of
     `../shared/data/text/` (Debian and Bible heads, classical Bible, Tatoeba, fortunes,
     poetry, Botchan, Wikipedia and C4 demos);
   - `llama2+chuan`: `expand_tokenizer` adds 23,296 pieces to LLaMA-2 (55,296 in all, the
     size of Chinese-LLaMA-2), learned from the Chinese part of that rest (pieces with ASCII
     characters are skipped, so English cannot change).
   The goal, judged on `llama2+chuan`: it matches or beats Chinese-LLaMA-2 on Chinese with no
   larger a vocabulary, while every English line encodes to exactly LLaMA-2's ids.
2. Encoding throughput (characters/s) on all held-out lines with LLaMA-2's vocabulary:
   `sentencepiece` itself, chuan's `load_tokenizer` (fast and slow), and what users pick in
   transformers (`LlamaTokenizerFast`, backed by the `tokenizers` library), plus the
   `tokenizers` object underneath called directly. One batch call over all lines per run,
   after a warm-up; runs go round-robin over the encoders and the median is reported, with
   one thread everywhere (`RAYON_NUM_THREADS=1`, sentencepiece `num_threads=1`), so the
   numbers are per core. Every path's ids are checked against sentencepiece's.

    python benchmarks/bench_tokenizer.py                 # full run, about 2 minutes on 2 cores
    python benchmarks/bench_tokenizer.py --quick         # smoke run, under a minute
    python benchmarks/bench_tokenizer.py --json out.json --png out.png --work /tmp/bench
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # before `tokenizers` starts its pool

import argparse
import json
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # baichuan_vocab

from baichuan_vocab import write_baichuan_tokenizer  # noqa: E402
from chuan.tokenizer.spm import load_sentencepiece  # noqa: E402
from chuan.tokenizer.stats import (  # noqa: E402
    StatsReport,
    read_lines,
    render_summary,
    render_table,
    tokenizer_stats,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEXT = DATA / "text"
TOKENIZERS = DATA / "tokenizers"
LLAMA = TOKENIZERS / "llama" / "tokenizer.model"
CHINESE_LLAMA = TOKENIZERS / "chinese_llama" / "chinese_llama2_tokenizer.model"
BAICHUAN_GGUF = TOKENIZERS / "baichuan" / "ggml-vocab-baichuan.gguf"
HELD_OUT_SHARE = 0.10
ANSI = re.compile(r"\x1b\[[0-9;]*m")
ALPACA_FIELDS = ("instruction", "input", "output")
EXPANDED = "llama2+chuan"  # the expansion the goal is judged on ...
BASELINE = "chinese-llama2"  # ... against this
TRANSFORMERS_FAST = "transformers LlamaTokenizerFast"  # the throughput baseline

# vocab size of the chuan-trained BPE and pieces added to LLaMA-2, per run mode
SIZES = {"full": (64_000, 55_296 - 32_000), "quick": (8_000, 4_000)}
THROUGHPUT_RUNS = {"full": 7, "quick": 3}


# --- corpora --------------------------------------------------------------------------------


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines if line.strip()), encoding="utf-8")
    return path


def split_tail(lines: list[str]) -> tuple[list[str], list[str]]:
    """(training head, held-out tail): the tail is the last 10% of lines."""
    cut = len(lines) - int(len(lines) * HELD_OUT_SHARE)
    return lines[:cut], lines[cut:]


def poetry_lines(node) -> list[str]:
    """Every `paragraphs` line anywhere in a chinese-poetry JSON tree."""
    if isinstance(node, list):
        return [line for item in node for line in poetry_lines(item)]
    if isinstance(node, dict):
        own = [p for p in node.get("paragraphs", []) if isinstance(p, str)]
        return own + [line for value in node.values() for line in poetry_lines(value)]
    return []


def fortune_lines(path: Path) -> list[str]:
    """Entry lines of a fortune file, without `%` separators and ANSI colour escapes."""
    text = ANSI.sub("", path.read_text(encoding="utf-8"))
    return [line.strip() for line in text.splitlines() if line.strip() not in ("", "%")]


def prepare_corpora(work: Path, quick: bool) -> tuple[dict, dict]:
    """Held-out sets (label -> files) and training sets (`zh`/`en` -> files) under `work`."""
    held_out, train = {}, {"zh": [], "en": []}
    for lang, path in (
        ("zh", TEXT / "zh_modern" / "debian-reference.zh-cn.txt"),
        ("en", TEXT / "en" / "debian-reference.en.txt"),
    ):
        head, tail = split_tail(path.read_text(encoding="utf-8").splitlines())
        held_out[f"{lang}/debian"] = [write_lines(work / "held_out" / f"{lang}-debian.txt", tail)]
        train[lang].append(write_lines(work / "train" / f"{lang}-debian.txt", head))

    bible = [row.split("\t") for row in (TEXT / "parallel" / "bible_kjv_cuvs_wenli.tsv")
             .read_text(encoding="utf-8").splitlines()[1:]]  # fmt: skip
    head, tail = split_tail(bible)
    for lang, column in (("zh", 2), ("en", 1)):
        held_out[f"{lang}/bible"] = [
            write_lines(work / "held_out" / f"{lang}-bible.txt", [v[column] for v in tail])
        ]
        train[lang].append(
            write_lines(work / "train" / f"{lang}-bible.txt", [v[column] for v in head])
        )
    for lang in ("zh", "en"):  # a domain no tokenizer here was trained on (instructions)
        records = json.loads((DATA / "sft" / f"alpaca_{lang}_demo.json").read_text("utf-8"))
        lines = [x for r in records for f in ALPACA_FIELDS for x in r[f].splitlines()]
        held_out[f"{lang}/alpaca"] = [write_lines(work / "held_out" / f"{lang}-alpaca.txt", lines)]
    if quick:
        return held_out, train

    train["zh"].append(write_lines(work / "train" / "lzh-bible.txt", [v[3] for v in head]))
    tatoeba = (TEXT / "parallel" / "tatoeba_cmn_eng.txt").read_text(encoding="utf-8-sig")
    pairs = [line.split("\t") for line in tatoeba.splitlines() if line]
    train["en"].append(write_lines(work / "train" / "en-tatoeba.txt", [p[0] for p in pairs]))
    train["zh"].append(write_lines(work / "train" / "zh-tatoeba.txt", [p[1] for p in pairs]))
    fortunes = [TEXT / "zh_modern" / "fortunes_zh_chinese"]
    fortunes += sorted((TEXT / "zh_classical" / "fortunes_zh").iterdir())
    train["zh"].append(
        write_lines(
            work / "train" / "zh-fortunes.txt", [x for f in fortunes for x in fortune_lines(f)]
        )
    )
    poems = sorted((TEXT / "zh_classical" / "chinese_poetry").glob("*.json"))
    lines = [x for f in poems for x in poetry_lines(json.loads(f.read_text(encoding="utf-8")))]
    train["zh"].append(write_lines(work / "train" / "lzh-poetry.txt", lines))
    train["en"] += [TEXT / "en" / "botchan.txt", TEXT / "en" / "wiki_demo.txt"]
    train["en"].append(TEXT / "en" / "c4_demo.jsonl")
    return held_out, train


# --- tokenizers -----------------------------------------------------------------------------


def timed(label: str, build, *args):
    """Run `build(*args)`, report its wall time on stderr, return (result, seconds)."""
    print(f"building {label} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = build(*args)
    seconds = time.perf_counter() - start
    print(f"  {label}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return result, seconds


def build_tokenizers(work: Path, train: dict, mode: str) -> tuple[dict, dict, dict]:
    """(name -> tokenizer path, name -> build seconds, name -> error) in table order.

    A chuan builder that is missing or fails becomes an error row instead of ending the run.
    """
    vocab_size, add = SIZES[mode]
    tokenizers = {"llama2": LLAMA, BASELINE: CHINESE_LLAMA}
    seconds, errors = {}, {}
    tokenizers["baichuan-7b"], seconds["baichuan-7b"] = timed(
        "baichuan-7b", write_baichuan_tokenizer, BAICHUAN_GGUF, work / "baichuan-7b"
    )

    def train_bpe(out: Path) -> Path:
        from chuan.tokenizer.train import train_tokenizer

        train_tokenizer(
            train["zh"] + train["en"], out, vocab_size=vocab_size, seed=0, progress=False
        )
        return out

    def expand(out: Path) -> Path:
        from chuan.tokenizer.expand import expand_tokenizer

        expand_tokenizer(LLAMA, out, train_on=train["zh"], add=add, seed=0)
        return out

    builders = {f"chuan-bpe-{vocab_size // 1000}k": train_bpe, EXPANDED: expand}
    for name, build in builders.items():
        try:
            tokenizers[name], seconds[name] = timed(name, build, work / slug(name))
        except Exception as err:  # a missing or broken builder is reported, not fatal
            errors[name] = f"{type(err).__name__}: {err}"
            print(f"  {name} failed: {errors[name]}", file=sys.stderr, flush=True)
    return tokenizers, seconds, errors


def slug(name: str) -> str:
    """A dir name for a tokenizer name."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", name).strip("-")


# --- section 1: compression -----------------------------------------------------------------


def identical_lines(tokenizers: dict, base: str, files: list[Path]) -> dict:
    """Per tokenizer: how many lines encode to exactly the base tokenizer's ids."""
    lines = [line for path in files for line in read_lines(path)]
    base_ids = load_sentencepiece(tokenizers[base]).encode(lines)
    result = {}
    for name, path in tokenizers.items():
        ids = load_sentencepiece(path).encode(lines)
        result[name] = {
            "identical": sum(a == b for a, b in zip(ids, base_ids, strict=True)),
            "lines": len(lines),
        }
    return result


def goal_verdict(report: StatsReport, english: dict, expanded: str) -> dict:
    """The expansion vs Chinese-LLaMA-2, per Chinese set: tokens, vocabulary, English identity.

    Met only if the expansion spends no more tokens than Chinese-LLaMA-2 on every Chinese set
    (a total would let an in-domain win hide an out-of-domain loss).
    """
    sets = {}
    for lang in report.languages:
        if lang.startswith("zh"):
            ours, theirs = report.row(expanded, lang).tokens, report.row(BASELINE, lang).tokens
            sets[lang] = {"tokens": ours, "tokens_chinese_llama2": theirs, "ratio": ours / theirs}
    vocab = report.row(expanded, report.languages[0]).vocab_size
    their_vocab = report.row(BASELINE, report.languages[0]).vocab_size
    same = english[expanded]
    return {
        "zh_sets": sets,
        "vocab": vocab,
        "vocab_chinese_llama2": their_vocab,
        "english_identical_lines": same["identical"],
        "english_lines": same["lines"],
        "met": all(v["ratio"] <= 1 for v in sets.values())
        and vocab <= their_vocab
        and same["identical"] == same["lines"],
    }


def print_compression(result: dict) -> None:
    report = StatsReport.from_dict(result["report"])
    print("## Compression on held-out text\n")
    print(render_summary(report, "tokens_per_1k_chars") + "\n")
    print(render_summary(report, "relative_to_first") + "\n")
    print(render_table(report) + "\n")
    english = result["english_identical"]
    rows = [[name, f"{v['identical']:,} / {v['lines']:,}"] for name, v in english.items()]
    print(markdown_table(["tokenizer", "English lines with LLaMA-2's exact ids"], rows) + "\n")
    if result["builds"]:
        rows = [[name, f"{s:.1f}"] for name, s in result["builds"].items()]
        print(markdown_table(["built", "seconds"], rows) + "\n")
    for name, error in result["errors"].items():
        print(f"- **{name} not run**: {error}")
    goal = result.get("goal")
    if goal:
        rows = [
            [lang, f"{v['tokens']:,}", f"{v['tokens_chinese_llama2']:,}", f"{v['ratio']:.3f}"]
            for lang, v in goal["zh_sets"].items()
        ]
        headers = ["Chinese set", f"{EXPANDED} tokens", f"{BASELINE} tokens", "ratio"]
        print(markdown_table(headers, rows) + "\n")
        print(
            f"Goal ({'met' if goal['met'] else 'NOT met'}; needs ratio <= 1 on every Chinese "
            f"set): {goal['vocab']:,} vs {goal['vocab_chinese_llama2']:,} pieces; "
            f"{goal['english_identical_lines']:,} of {goal['english_lines']:,} English lines "
            "encode to LLaMA-2's exact ids.\n"
        )


def compression_benchmark(work: Path, held_out: dict, train: dict, args) -> dict:
    """Section 1: build the tokenizers, measure them; the JSON-ready result."""
    mode = "quick" if args.quick else "full"
    tokenizers, seconds, errors = build_tokenizers(work, train, mode)
    report = tokenizer_stats(
        [f"{name}={path}" for name, path in tokenizers.items()], held_out, png_out=args.png
    )
    en_files = [path for lang, files in held_out.items() if lang.startswith("en") for path in files]
    english = identical_lines(tokenizers, "llama2", en_files)
    expanded = EXPANDED if EXPANDED in tokenizers else None
    result = {
        "report": report.to_dict(),
        "training_files": {lang: [str(p) for p in files] for lang, files in train.items()},
        "builds": seconds,
        "errors": errors,
        "english_identical": english,
        "goal": goal_verdict(report, english, expanded) if expanded else None,
    }
    return result


# --- section 2: throughput ------------------------------------------------------------------


def hf_encoders(name: str, tokenizer) -> dict:
    """An HF tokenizer's batch call, and the `tokenizers` object under it called directly.

    The two apart show what is the BPE engine and what is transformers' per-call overhead.
    """
    backend = tokenizer.backend_tokenizer
    return {
        name: lambda lines: tokenizer(lines, add_special_tokens=False)["input_ids"],
        f"{name}, backend direct": lambda lines: [
            e.ids for e in backend.encode_batch(lines, add_special_tokens=False)
        ],
    }


def encoders(llama_dir: Path) -> tuple[dict, dict]:
    """name -> function(lines) -> list of id lists; name -> error for paths that cannot load."""
    from transformers import LlamaTokenizerFast

    sp = load_sentencepiece(llama_dir)
    found = {"sentencepiece": lambda lines: sp.encode(lines, num_threads=1)}
    found |= hf_encoders(TRANSFORMERS_FAST, LlamaTokenizerFast.from_pretrained(llama_dir))
    errors = {}
    for use_fast in (True, False):
        name = f"chuan load_tokenizer(use_fast={use_fast})"
        try:
            from chuan.tokenizer.hf import load_tokenizer

            tok = load_tokenizer(llama_dir, use_fast=use_fast)
        except Exception as err:  # missing module or failing load: a row saying so
            errors[name] = f"{type(err).__name__}: {err}"
            continue
        if use_fast:
            found |= hf_encoders(name, tok)
        else:
            found[name] = lambda lines, tok=tok: tok(lines, add_special_tokens=False)["input_ids"]
    return found, errors


def throughput_benchmark(work: Path, held_out: dict, args: argparse.Namespace) -> list[dict]:
    """Section 2: characters/s of each encoding path on all held-out lines, ids checked."""
    llama_dir = work / "llama2"
    llama_dir.mkdir(exist_ok=True)
    shutil.copyfile(LLAMA, llama_dir / "tokenizer.model")  # a dir with only tokenizer.model
    lines = [line for files in held_out.values() for path in files for line in read_lines(path)]
    characters = sum(map(len, lines))
    runs = THROUGHPUT_RUNS["quick" if args.quick else "full"]
    found, errors = encoders(llama_dir)
    reference = found["sentencepiece"](lines)
    ids = {name: encode(lines) for name, encode in found.items()}  # warm-up; ids to check
    times = {name: [] for name in found}
    for run in range(runs):  # round-robin, so load from other processes hits every encoder
        print(f"timing run {run + 1}/{runs} ...", file=sys.stderr, flush=True)
        for name, encode in found.items():
            start = time.perf_counter()
            encode(lines)
            times[name].append(time.perf_counter() - start)
    rows = []
    for name in found:
        median = statistics.median(times[name])
        rows.append(
            {
                "encoder": name,
                "lines": len(lines),
                "characters": characters,
                "median_s": median,
                "min_s": min(times[name]),
                "chars_per_s": characters / median,
                "lines_differing": sum(a != b for a, b in zip(ids[name], reference, strict=True)),
            }
        )
    rows += [{"encoder": name, "error": error} for name, error in errors.items()]
    return rows


def print_throughput(rows: list[dict]) -> None:
    ok = [row for row in rows if "error" not in row]
    print(
        f"## Encoding throughput, LLaMA-2 vocabulary, {ok[0]['lines']:,} held-out lines, "
        f"{ok[0]['characters']:,} characters, one thread\n"
    )
    base = next(row["chars_per_s"] for row in ok if row["encoder"] == TRANSFORMERS_FAST)
    table = [
        [
            row["encoder"],
            f"{row['chars_per_s'] / 1e6:.2f}",
            f"{1000 * row['median_s']:.0f}",
            f"{1000 * row['min_s']:.0f}",
            f"{row['chars_per_s'] / base:.2f}x",
            f"{row['lines_differing']:,}",
        ]
        for row in ok
    ]
    table += [
        [row["encoder"], "not run", "", "", "", row["error"]] for row in rows if "error" in row
    ]
    headers = [
        "encoder", "M chars/s (median)", "median ms", "min ms", "vs LlamaTokenizerFast",
        "lines != sentencepiece ids",
    ]  # fmt: skip
    print(markdown_table(headers, table) + "\n")


# --- main -----------------------------------------------------------------------------------


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|---" + "|---:" * (len(headers) - 1) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def environment(args: argparse.Namespace) -> dict:
    packages = ("sentencepiece", "tokenizers", "transformers")
    return {
        "python": platform.python_version(),
        **{name: version(name) for name in packages},
        "cores": len(os.sched_getaffinity(0)),
        "mode": "quick" if args.quick else "full",
        "rayon_threads": os.environ["RAYON_NUM_THREADS"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: train on the Debian/Bible heads only, an 8k BPE and 4,000 added "
        "pieces instead of 64k and 23,296, and 3 timing runs instead of 5",
    )
    parser.add_argument("--json", type=Path, help="also write all results to this JSON file")
    parser.add_argument("--png", type=Path, help="also write the tokens/1k-chars bar chart")
    parser.add_argument(
        "--work",
        type=Path,
        help="keep corpora and built tokenizers in this dir (default: a temporary dir, removed)",
    )
    parser.add_argument(
        "--skip",
        choices=("compression", "throughput"),
        action="append",
        default=[],
        help="leave out a section (may be repeated)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    results = {"environment": environment(args)}
    with tempfile.TemporaryDirectory(prefix="bench_tokenizer-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        held_out, train = prepare_corpora(work, args.quick)
        if "compression" not in args.skip:
            results["compression"] = compression_benchmark(work, held_out, train, args)
            print_compression(results["compression"])
        if "throughput" not in args.skip:
            results["throughput"] = throughput_benchmark(work, held_out, args)
            print_throughput(results["throughput"])
    results["wall_s"] = time.perf_counter() - start
    print(f"Wall time: {results['wall_s']:.0f} s")
    if args.json:
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
