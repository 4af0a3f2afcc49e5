"""`chuan data clean`: language routing, document and line rules, per-rule counts, rejects.

Each document goes through:

1. the generic rules (`min_letters`: no text to speak of, e.g. pure digits or symbols;
   `mixed_alnum_words`: random strings), run on every document whatever its language;
2. zh / en / other routing by script ratio (`chuan.data.langid`); `other` is kept (tagged) or
   dropped by `keep_other`;
3. optional Traditional -> Simplified conversion of Chinese documents (`to_simplified`);
4. the language's document rules on the text as it came (Gopher, C4 page rules; zh starting set);
5. the line pass: line rules remove lines, in-document repeats are removed, citation markers are
   stripped; the removed lines' share of words (en) or characters (zh) is measured;
6. the language's final rules on the cleaned text (RefinedWeb removed-share, C4 sentences, FineWeb).

A document is dropped by the first rule that fires; the reject keeps the rule, the reason and the
whole record. Kept records keep every input field; `text` is the cleaned text, `lang` is added
(overwritten when present) and, when `meta` is absent or a mapping, `meta.clean` holds the Han
share and the number of removed lines.

Rules are switched off by name in `CleanConfig.disabled` (names as in `chuan.data.rules`, plus
`line_repeated` and `lang_other`).
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from chuan.config import ConfigError, to_dict
from chuan.data import rules
from chuan.data.executor import Executor
from chuan.data.langid import LangIdConfig, identify
from chuan.data.shards import (
    JsonlZstWriter,
    ShardStats,
    StageRun,
    committed,
    run_shards,
    shard_records,
    totals,
)
from chuan.errors import DependencyError
from chuan.fileio import write_report

STAGE_RULES = ("lang_other", rules.REPEATED_LINE_RULE)


@dataclass
class CleanConfig:
    """Every threshold of `chuan data clean`; YAML-loadable with `chuan.config.load_config`."""

    keep_other: bool = True
    to_simplified: bool = False
    annotate_meta: bool = True
    # C4's terminal-punctuation line filter is off by default, as in FineWeb (see the rule).
    disabled: list[str] = field(default_factory=lambda: ["line_no_terminal_punct"])
    generic: rules.GenericRules = field(default_factory=rules.GenericRules)
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    en: rules.EnglishRules = field(default_factory=rules.EnglishRules)
    zh: rules.ChineseRules = field(default_factory=rules.ChineseRules)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.disabled) - set(all_rule_names()))
        if unknown:
            raise ConfigError(
                f"disabled: unknown rule {unknown[0]!r}; rules: {', '.join(all_rule_names())}"
            )


def all_rule_names() -> list[str]:
    """Every name `CleanConfig.disabled` accepts."""
    tables = (
        rules.GENERIC_RULES,
        rules.EN_DOC_RULES,
        rules.EN_LINE_RULES,
        rules.EN_FINAL_RULES,
        rules.ZH_DOC_RULES,
        rules.ZH_LINE_RULES,
        rules.ZH_FINAL_RULES,
    )
    return sorted({*STAGE_RULES, *(name for table in tables for name in table)})


@dataclass(frozen=True)
class RuleSet:
    """One language's enabled rules and their thresholds."""

    thresholds: object
    doc: dict
    line: dict
    final: dict
    strip_citations: bool
    repeated_lines: bool


def rule_sets(config: CleanConfig) -> dict[str, RuleSet]:
    """The enabled rules per language, `disabled` taken out."""
    off = set(config.disabled)

    def on(table: dict) -> dict:
        return {name: rule for name, rule in table.items() if name not in off}

    repeated = rules.REPEATED_LINE_RULE not in off
    return {
        "en": RuleSet(
            config.en,
            on(rules.EN_DOC_RULES),
            on(rules.EN_LINE_RULES),
            on(rules.EN_FINAL_RULES),
            strip_citations=True,
            repeated_lines=repeated,
        ),
        "zh": RuleSet(
            config.zh,
            on(rules.ZH_DOC_RULES),
            on(rules.ZH_LINE_RULES),
            on(rules.ZH_FINAL_RULES),
            strip_citations=False,
            repeated_lines=repeated,
        ),
    }


@dataclass
class Verdict:
    """The outcome for one document: cleaned text, or the rule that dropped it."""

    lang: str
    text: str
    rule: str | None = None
    reason: str | None = None
    han_share: float = 0.0
    lines_removed: Counter = field(default_factory=Counter)


def first_failure(doc: rules.Doc, table: dict, thresholds: object) -> tuple[str, str] | None:
    """(rule name, reason) of the first rule of `table` that drops `doc`, or None."""
    for name, rule in table.items():
        reason = rule(doc, thresholds)
        if reason is not None:
            return name, reason
    return None


def clean_lines(text: str, ruleset: RuleSet, lang: str) -> tuple[str, float, Counter]:
    """Apply the line rules: (cleaned text, removed share, lines removed per rule).

    The removed share counts words for English and non-space characters for Chinese. Blank
    lines are kept so paragraphs stay apart; runs of them are not collapsed.
    """
    lines = text.split("\n")
    if ruleset.strip_citations:
        lines = [rules.strip_citations(line) for line in lines]
    repeats = rules.repeated_lines(lines) if ruleset.repeated_lines else [False] * len(lines)
    measure = (lambda s: len(s.split())) if lang == "en" else (lambda s: len("".join(s.split())))
    kept, removed, total = [], Counter(), 0
    lost = 0
    for line, repeat in zip(lines, repeats, strict=True):
        stripped = line.strip()
        size = measure(stripped)
        total += size
        name = rules.REPEATED_LINE_RULE if repeat else _line_rule_hit(stripped, ruleset)
        if name is None:
            kept.append(line)
        else:
            removed[name] += 1
            lost += size
    return "\n".join(kept).strip("\n"), rules.share(lost, total), removed


def _line_rule_hit(line: str, ruleset: RuleSet) -> str | None:
    if not line:
        return None
    return next((n for n, rule in ruleset.line.items() if rule(line, ruleset.thresholds)), None)


def to_simplified(text: str) -> str:
    """Traditional -> Simplified Chinese with OpenCC's `t2s` table (`opencc-python-reimplemented`,
    Apache-2.0, pure Python, table shipped inside the package)."""
    return _t2s().convert(text)


@functools.cache
def _t2s():
    try:
        import opencc
    except ImportError:
        raise DependencyError(
            "to_simplified needs the `opencc-python-reimplemented` package: "
            "pip install opencc-python-reimplemented"
        ) from None
    return opencc.OpenCC("t2s")


def judge(text: str, config: CleanConfig, sets: dict[str, RuleSet]) -> Verdict:
    """Route, convert and clean one document's text."""
    off = set(config.disabled)
    generic = {n: r for n, r in rules.GENERIC_RULES.items() if n not in off}
    failure = first_failure(rules.Doc(text), generic, config.generic)
    if failure is not None:
        return Verdict("other", text, *failure)
    lang, counts = identify(text, config.langid)
    verdict = Verdict(lang, text, han_share=round(counts.han_share, 4))
    if lang == "other":
        if not config.keep_other and "lang_other" not in off:
            verdict.rule, verdict.reason = "lang_other", "neither zh nor en (keep_other: false)"
        return verdict
    if lang == "zh" and config.to_simplified:
        verdict.text = to_simplified(text)
    ruleset = sets[lang]
    failure = first_failure(rules.Doc(verdict.text), ruleset.doc, ruleset.thresholds)
    if failure is None:
        cleaned, removed_share, verdict.lines_removed = clean_lines(verdict.text, ruleset, lang)
        final = rules.Doc(cleaned, removed_share=removed_share)
        failure = first_failure(final, ruleset.final, ruleset.thresholds)
        verdict.text = cleaned
    if failure is not None:
        verdict.rule, verdict.reason = failure
    return verdict


def kept_record(record: dict, verdict: Verdict, annotate: bool) -> dict:
    """The input record with cleaned `text`, `lang`, and (optionally) `meta.clean` added."""
    out = {**record, "text": verdict.text, "lang": verdict.lang}
    meta = record.get("meta")
    if annotate and (meta is None or isinstance(meta, dict)):
        clean = {
            "han_share": verdict.han_share,
            "lines_removed": sum(verdict.lines_removed.values()),
        }
        out["meta"] = {**(meta or {}), "clean": clean}
    return out


def clean_shard(
    path: Path,
    shard: Path,
    rejects_path: Path,
    stats: ShardStats,
    *,
    config: CleanConfig,
    progress: bool = False,
) -> None:
    """`run_shards` work function: clean one input file into one output shard."""
    sets = rule_sets(config)
    out, rejects = JsonlZstWriter(shard), JsonlZstWriter(rejects_path)
    langs: Counter = Counter()
    lines_removed: Counter = Counter()
    bytes_in = bytes_out = 0
    with committed(out, rejects):
        records = shard_records(path, stats, rejects)
        for line, record in tqdm(records, desc=path.name, unit=" docs", disable=not progress):
            verdict = judge(record["text"], config, sets)
            bytes_in += len(record["text"].encode("utf-8"))
            if verdict.rule is None:
                out.write(kept_record(record, verdict, config.annotate_meta))
                stats.kept += 1
                langs[verdict.lang] += 1
                lines_removed.update(verdict.lines_removed)
                bytes_out += len(verdict.text.encode("utf-8"))
            else:
                stats.rejected += 1
                stats.reasons[verdict.rule] += 1
                rejects.write(
                    {
                        "file": str(path),
                        "line": line,
                        "reason": verdict.reason,
                        "rule": verdict.rule,
                        "lang": verdict.lang,
                        "record": record,
                    }
                )
    stats.extra.update(
        langs=dict(langs),
        lines_removed=dict(lines_removed),
        bytes_in=bytes_in,
        bytes_out=bytes_out,
    )


def clean_corpus(
    inputs,
    out: str | Path,
    *,
    config: CleanConfig | None = None,
    seed: int = 0,
    workers: int = 1,
    executor: Executor | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Clean every corpus file of `inputs` into `out` (resumable per shard); return the report.

    A re-run into the same `out` with the same config, seed and inputs resumes; any other is
    refused (`overwrite` redoes it from scratch; see `chuan.data.shards.StageRun`).
    The rules are deterministic, so `seed` changes nothing today; it is recorded in the report
    as every stage's is.
    """
    config = config or CleanConfig()
    out = Path(out)
    start = time.perf_counter()
    work = functools.partial(clean_shard, config=config, progress=progress)
    settings = {"config": to_dict(config), "seed": seed}
    with StageRun(inputs, out, stage="clean", settings=settings, overwrite=overwrite) as run:
        stats = run_shards(inputs, out, work, workers=workers, shards=run.shards, executor=executor)
        report = build_report(stats, config, seed=seed, seconds=time.perf_counter() - start)
        write_report(out, report, report_markdown(report))
    return report


def build_report(stats: list[ShardStats], config: CleanConfig, *, seed: int, seconds: float):
    """Totals, the per-rule table (documents dropped, lines removed), languages and config."""
    langs: Counter = Counter()
    lines_removed: Counter = Counter()
    for s in stats:
        langs.update(s.extra.get("langs", {}))
        lines_removed.update(s.extra.get("lines_removed", {}))
    sums = totals(stats)
    return {
        **sums,
        "documents_dropped_per_rule": sums["reasons"],
        "lines_removed_per_rule": dict(lines_removed.most_common()),
        "kept_per_lang": dict(langs.most_common()),
        "bytes_in": sum(s.extra.get("bytes_in", 0) for s in stats),
        "bytes_out": sum(s.extra.get("bytes_out", 0) for s in stats),
        "seconds": round(seconds, 3),
        "seed": seed,
        "config": to_dict(config),
    }


def report_markdown(report: dict) -> str:
    """A short summary for people: totals, then the per-rule tables."""
    lines = [
        "# Cleaned corpus",
        "",
        f"{report['read']:,} documents read, {report['kept']:,} kept, "
        f"{report['rejected']:,} rejected (see `rejects/`); "
        f"{report['bytes_in']:,} -> {report['bytes_out']:,} bytes of text "
        f"(shards finished this run and before); seed {report['seed']}.",
        "",
        "| kept language | documents |",
        "|---|---:|",
        *(f"| {k} | {n:,} |" for k, n in report["kept_per_lang"].items()),
        "",
        "| rule | documents dropped |",
        "|---|---:|",
        *(f"| {k} | {n:,} |" for k, n in report["documents_dropped_per_rule"].items()),
        "",
        "| line rule | lines removed |",
        "|---|---:|",
        *(f"| {k} | {n:,} |" for k, n in report["lines_removed_per_rule"].items()),
    ]
    return "\n".join(lines) + "\n"
