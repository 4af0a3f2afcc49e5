"""Reciprocal rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009): hybrid search.

BM25 scores and cosines live on different scales, so hybrid search fuses ranks, not scores:
a chunk's fused score is the sum over the rankings that hold it of 1 / (k + rank), rank from 1.
k = 60 is the paper's value; it keeps one ranking's top hit from outweighing agreement.
"""

from __future__ import annotations

RRF_K = 60


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = RRF_K) -> dict[int, float]:
    """Item -> fused score, ordered best first (ties by the item, for determinism)."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return dict(sorted(fused.items(), key=lambda pair: (-pair[1], pair[0])))
