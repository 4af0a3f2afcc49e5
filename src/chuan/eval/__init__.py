"""Evaluation: multiple-choice benchmarks (MMLU / CMMLU / C-Eval), perplexity, scaling laws."""
