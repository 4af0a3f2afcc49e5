"""Retrieval over a knowledge base of the user's documents (`chuan rag`).

chunking (documents -> addressable chunks) -> analyzer (bilingual terms) -> sparse (BM25 by
bm25s) and dense (LSA or a model's states) -> build (the KB dir) -> kb (`KnowledgeBase.open(path)
.search(query)`, the API later stages such as cited answers use) -> qa / evaluate (QA sets with
known evidence, retrieval metrics). See docs/rag.md.
"""
