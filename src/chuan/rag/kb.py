"""A knowledge base on disk, opened for search: `KnowledgeBase.open(path).search(query)`.

The layout (written by `chuan.rag.build`):

    KB/manifest.json          what the KB is: format version, analyzer, chunking, BM25 and dense
                              settings, inputs with their sha256, counts, library versions;
                              written last, so a KB without it is unfinished
    KB/chunks/KEY.jsonl       the chunks of one input file (`Chunk` records), KEY naming the
                              file, its content and the chunking settings
    KB/chunks/KEY.json        that shard's counts, written after it: the shard is complete
    KB/index-FINGERPRINT/     bm25/ (the bm25s index and document frequencies) and dense/
                              (vectors.npy and, for LSA, its projection), named after what
                              they were built from; the manifest names the one in use

Search modes: `sparse` (BM25), `dense` (cosine of dense vectors), `hybrid` (reciprocal rank
fusion of the two rankings, k = 60). Every mode is gated by the relevance filter (see
`chuan.rag.sparse`): when no chunk reaches `threshold` the query is about something the KB does
not hold and nothing is returned; in `sparse` mode each hit must reach it as well.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from chuan.errors import InputError, MissingError
from chuan.rag.analyzer import Analyzer
from chuan.rag.dense import VECTORS, LsaEncoder, ModelEncoder
from chuan.rag.fusion import reciprocal_rank_fusion
from chuan.rag.sparse import SparseIndex

FORMAT = "chuan-rag-kb"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODES = ("sparse", "dense", "hybrid")
# The relevance-filter default: the share of the query's idf mass the best chunk must match.
# Chosen on the bundled sample's QA set (docs/rag.md): answerable questions score 0.2 and up.
DEFAULT_THRESHOLD = 0.1
# How many of each ranking hybrid fusion looks at (beyond k, so fusion can reorder).
FUSION_DEPTH = 100


@dataclass(frozen=True)
class Hit:
    """One search result: the chunk, where it is, and its scores. `score` is the mode's own
    (BM25, cosine or RRF); `relevance` is the filter's normalised BM25 in [0, 1)."""

    rank: int
    score: float
    relevance: float
    chunk: int
    text: str
    source: str
    line: int
    start: int
    end: int
    core_start: int
    doc_id: str | None

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"

    def to_dict(self) -> dict:
        return asdict(self)


def read_manifest(path: str | Path) -> dict:
    """The manifest of the KB at `path`, checked for this chuan's format version."""
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        if path.is_dir() and (path / "chunks").is_dir():
            raise MissingError(
                f"{path} is an unfinished knowledge base (no {MANIFEST}): the `chuan rag index` "
                "run that wrote it stopped; run the same command again to finish it"
            )
        raise MissingError(
            f"{path} is not a knowledge base (no {file}); build one with "
            f"`chuan rag index DOCS... --out {path}`"
        )
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputError(f"{file}: not valid JSON ({e}); rebuild the knowledge base") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{file}: field 'format': not a chuan knowledge base manifest")
    version = manifest.get("version")
    if version != FORMAT_VERSION:
        raise InputError(
            f"{file}: field 'version': knowledge base format {version!r}, this chuan reads "
            f"format {FORMAT_VERSION} (written by chuan {manifest.get('chuan', '?')}); rebuild "
            f"it with `chuan rag index ... --out {path} --overwrite`"
        )
    return manifest


def read_chunks(kb: Path, manifest: dict) -> list[dict]:
    """Every chunk record, in index order (the manifest's inputs, each shard in order)."""
    chunks: list[dict] = []
    for entry in manifest["inputs"]:
        shard = kb / entry["shard"]
        if not shard.is_file():
            raise MissingError(
                f"{shard} is missing: the knowledge base {kb} is damaged; rebuild it"
            )
        with open(shard, encoding="utf-8") as f:
            chunks.extend(json.loads(line) for line in f)
    if len(chunks) != manifest["counts"]["chunks"]:
        raise InputError(
            f"{kb}: {len(chunks)} chunks in the shards, the manifest says "
            f"{manifest['counts']['chunks']}: the knowledge base is damaged; rebuild it"
        )
    return chunks


class KnowledgeBase:
    """An opened KB: chunks, analyzer, BM25 index and optional dense vectors."""

    def __init__(self, path: Path, manifest: dict, chunks: list[dict], analyzer: Analyzer,
                 sparse: SparseIndex, vectors: np.ndarray | None, encoder) -> None:  # fmt: skip
        self.path = path
        self.manifest = manifest
        self.chunks = chunks
        self.analyzer = analyzer
        self.sparse = sparse
        self.vectors = vectors
        self.encoder = encoder

    @classmethod
    def open(cls, path: str | Path, *, device: str | None = None) -> KnowledgeBase:
        """Load the KB at `path` (a model-dense KB loads its model, on `device`)."""
        path = Path(path)
        manifest = read_manifest(path)
        analyzer = Analyzer.from_settings(manifest["analyzer"])
        chunks = read_chunks(path, manifest)
        index = path / manifest["index"]
        bm25 = manifest["bm25"]
        sparse = SparseIndex.load(index / "bm25", len(chunks), k1=bm25["k1"], b=bm25["b"])
        dense = manifest["dense"]
        vectors = encoder = None
        if dense["kind"] != "none":
            vectors = np.load(index / "dense" / VECTORS)
            if dense["kind"] == "lsa":
                encoder = LsaEncoder.load(index / "dense", sparse.vocab)
            else:
                encoder = ModelEncoder(dense["model"], device=device)
        return cls(path, manifest, chunks, analyzer, sparse, vectors, encoder)

    def search(
        self,
        query: str,
        k: int = 5,
        *,
        mode: str = "sparse",
        threshold: float = DEFAULT_THRESHOLD,
    ) -> list[Hit]:
        """The best `k` chunks for `query`, best first; empty when the filter finds the query
        is not about this KB (see the module docstring)."""
        if mode not in MODES:
            raise InputError(f"unknown search mode {mode!r}; choose {', '.join(MODES)}")
        if mode != "sparse" and self.vectors is None:
            raise InputError(
                f"{self.path} has no dense vectors (indexed with --dense none): use --mode "
                "sparse, or re-index with --dense lsa or --dense MODEL_DIR"
            )
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        terms = self.analyzer.terms(query)
        bm25 = self.sparse.scores(terms)
        relevance = self.sparse.relevance(terms, bm25)
        if not len(relevance) or float(relevance.max()) < threshold or not terms:
            return []
        if mode == "sparse":
            order = _top(bm25, k)
            order = [i for i in order if bm25[i] > 0 and relevance[i] >= threshold]
            scores = bm25
        else:
            query_vector = self.encoder.encode_query(terms, query)
            cosine = self.vectors @ query_vector
            dense_ranked = [i for i in _top(cosine, max(k, FUSION_DEPTH)) if cosine[i] > 0]
            if mode == "dense":
                order, scores = dense_ranked[:k], cosine
            else:
                sparse_ranked = [i for i in _top(bm25, FUSION_DEPTH) if bm25[i] > 0]
                fused = reciprocal_rank_fusion([sparse_ranked, dense_ranked])
                order = list(fused)[:k]
                scores = np.zeros(len(self.chunks), dtype=np.float64)
                scores[order] = [fused[i] for i in order]
        return [self._hit(rank, i, scores[i], relevance[i]) for rank, i in enumerate(order, 1)]

    @functools.cached_property
    def chunks_by_line(self) -> dict[tuple[str, int], list[int]]:
        """(input file sha256, document line) -> the indices of that document's chunks: how
        a QA set's evidence, kept independent of chunking, finds its chunks."""
        sha = {entry["path"]: entry["sha256"] for entry in self.manifest["inputs"]}
        found: dict[tuple[str, int], list[int]] = {}
        for index, chunk in enumerate(self.chunks):
            found.setdefault((sha[chunk["source"]], chunk["line"]), []).append(index)
        return found

    def _hit(self, rank: int, index: int, score: float, relevance: float) -> Hit:
        chunk = self.chunks[index]
        return Hit(
            rank=rank,
            score=float(score),
            relevance=float(relevance),
            chunk=index,
            text=chunk["text"],
            source=chunk["source"],
            line=chunk["line"],
            start=chunk["start"],
            end=chunk["end"],
            core_start=chunk["core_start"],
            doc_id=chunk.get("doc_id"),
        )


def _top(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the `k` largest scores, best first, ties by index (deterministic)."""
    k = min(k, len(scores))
    if k == 0:
        return []
    part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return sorted(part.tolist(), key=lambda i: (-scores[i], i))
