"""Evaluation: MMLU / CMMLU / C-Eval, perplexity, lm-evaluation-harness."""
