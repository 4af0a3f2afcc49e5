"""The analyzer: English words, Chinese bigrams, NFKC, Traditional folded to Simplified."""

from __future__ import annotations

from chuan.rag.analyzer import Analyzer, opencc_available


def test_terms_of_mixed_text():
    terms = Analyzer(fold_traditional=False).terms("Hello WORLD, it's 3.14 中 白日依山 x中文y")
    assert terms == ["hello", "world", "it", "s", "3", "14", "中", "白日", "日依", "依山",
                     "x", "中文", "y"]  # fmt: skip


def test_nfkc_folds_full_width_letters_and_digits():
    assert Analyzer(fold_traditional=False).terms("ＡＢＣ１２３") == ["abc123"]


def test_traditional_is_folded_when_opencc_is_installed():
    assert opencc_available()  # the dev extra installs it: folding is always tested
    analyzer = Analyzer.default()
    assert analyzer.fold_traditional and analyzer.settings()["fold_traditional"] is True
    assert analyzer.terms("登鸛雀樓") == analyzer.terms("登鹳雀楼") == ["登鹳", "鹳雀", "雀楼"]
    assert Analyzer(fold_traditional=False).terms("雀樓") == ["雀樓"]
