"""Dense vectors of chunks and queries: LSA trained on the knowledge base, or a model's states.

`lsa`: latent semantic analysis. Each chunk becomes a TF-IDF vector over the analyzer's terms
(sublinear term frequency 1 + ln tf, smoothed idf ln((1 + N) / (1 + df)) + 1, L2-normalised),
and a truncated SVD of that chunk x term matrix (scipy's ARPACK `svds`, started from a fixed
vector, each component's sign fixed so its largest term weight is positive) gives `dims`
directions. A chunk's vector is its TF-IDF vector projected on them, L2-normalised, so a dot
product is a cosine. It needs nothing beyond numpy and scipy and no download, and it matches
terms that co-occur in the corpus even when the query does not use the chunk's own words.

A model dir: the mean over non-padding tokens of the last hidden states of any model chuan
loads (`chuan.infer.loading`: a chuan / Baichuan dir, an HF LLaMA dir, a quantized dir), with
its own tokenizer, L2-normalised. Nothing is downloaded: a dir that is not on disk is an error.

Vectors are float32 `.npy` files beside the rest of the index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from chuan.errors import InputError, MissingError

DEFAULT_LSA_DIMS = 128
VECTORS = "vectors.npy"
PROJECTION = "projection.npy"
IDF = "idf.npy"


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero), as float32."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms == 0, 1, norms)).astype(np.float32)


def _tfidf(rows: list[list[int]], idf: np.ndarray) -> sp.csr_matrix:
    """The L2-normalised sublinear TF-IDF matrix of term-id lists."""
    data: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    indptr = [0]
    for ids in rows:
        terms, counts = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
        weights = (1 + np.log(counts)) * idf[terms]
        norm = np.linalg.norm(weights)
        data.append(weights / norm if norm else weights)
        cols.append(terms)
        indptr.append(indptr[-1] + len(terms))
    return sp.csr_matrix(
        (
            np.concatenate(data) if data else np.zeros(0),
            np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64),
            np.asarray(indptr),
        ),
        shape=(len(rows), len(idf)),
    )


class LsaEncoder:
    """TF-IDF + truncated SVD; `projection` is the term x dims matrix V of the SVD."""

    kind = "lsa"

    def __init__(self, vocab: dict[str, int], idf: np.ndarray, projection: np.ndarray):
        self.vocab = vocab
        self.idf = idf
        self.projection = projection

    @classmethod
    def fit(
        cls, token_lists: list[list[str]], vocab: dict[str, int], dims: int = DEFAULT_LSA_DIMS
    ) -> tuple[LsaEncoder, np.ndarray]:
        """The encoder trained on the chunks' terms and the chunks' vectors."""
        rows = [[vocab[t] for t in terms] for terms in token_lists]
        df = np.zeros(len(vocab), dtype=np.float64)
        for ids in rows:
            df[np.unique(np.asarray(ids, dtype=np.int64))] += 1
        idf = np.log((1 + len(rows)) / (1 + df)) + 1
        matrix = _tfidf(rows, idf)
        k = min(dims, min(matrix.shape) - 1)
        if k < 1:
            raise InputError(
                f"--dense lsa needs at least 2 chunks and 2 distinct terms (got {matrix.shape[0]} "
                f"chunks, {matrix.shape[1]} terms); index more text or use --dense none"
            )
        v0 = np.full(min(matrix.shape), 1 / np.sqrt(min(matrix.shape)))
        _, sigma, vt = svds(matrix, k=k, v0=v0, solver="arpack")
        order = np.argsort(-sigma, kind="stable")
        v = vt[order].T  # terms x k, strongest direction first
        signs = np.sign(v[np.abs(v).argmax(axis=0), np.arange(v.shape[1])])
        v = (v * np.where(signs == 0, 1, signs)).astype(np.float32)
        encoder = cls(vocab, idf.astype(np.float32), v)
        return encoder, normalize_rows(matrix @ v)

    def settings(self) -> dict:
        return {"kind": self.kind, "dims": int(self.projection.shape[1])}

    def save(self, path: Path) -> None:
        np.save(path / PROJECTION, self.projection)
        np.save(path / IDF, self.idf)

    @classmethod
    def load(cls, path: Path, vocab: dict[str, int]) -> LsaEncoder:
        return cls(vocab, np.load(path / IDF), np.load(path / PROJECTION))

    def encode_query(self, terms: list[str], text: str) -> np.ndarray:
        """The query's unit vector (zeros when none of its terms is known): its TF-IDF
        weights, as for a chunk, times the rows of its terms in the projection."""
        known = np.asarray([self.vocab[t] for t in terms if t in self.vocab], dtype=np.int64)
        ids, counts = np.unique(known, return_counts=True)
        weights = (1 + np.log(counts)) * self.idf[ids]
        return normalize_rows((weights @ self.projection[ids])[None, :])[0]


class ModelEncoder:
    """Mean-pooled last hidden states of a model dir on disk."""

    kind = "model"

    def __init__(self, model_dir: str | Path, *, device: str | None = None, batch_size: int = 16):
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise MissingError(
                f"--dense {model_dir}: no such model dir (give none, lsa, or a model dir on "
                "disk, e.g. the model/ of `chuan sft`; nothing is downloaded)"
            )
        from chuan.infer.loading import load_model, load_saved_tokenizer

        self.model_dir = model_dir
        self.tokenizer = load_saved_tokenizer(model_dir)
        if self.tokenizer is None:
            raise InputError(
                f"--dense {model_dir}: the model dir has no tokenizer files to encode text with"
            )
        self.model = load_model(model_dir, device=device, dtype="fp32")
        self.batch_size = batch_size

    def settings(self) -> dict:
        return {
            "kind": self.kind,
            "model": str(self.model_dir),
            "dims": int(self.model.config.hidden_size),
            "pooling": "mean of last hidden states",
        }

    def encode(self, texts: list[str], progress=None) -> np.ndarray:
        """Unit vectors of `texts`, in batches, float32."""
        import torch

        out = []
        config = self.model.config
        max_length = config.model_max_length or config.max_position_embeddings or 4096
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            ids = [self.tokenizer.encode(t, add_special_tokens=False)[:max_length] for t in batch]
            width = max(1, max(len(i) for i in ids))
            input_ids = torch.zeros((len(ids), width), dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for row, seq in enumerate(ids):
                input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            device = next(self.model.parameters()).device
            with torch.no_grad():
                states = self.model.model(
                    input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False
                ).last_hidden_state
            weights = mask.to(device).unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1)
            out.append(pooled.float().cpu().numpy())
            if progress is not None:
                progress.update(len(batch))
        if not out:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return normalize_rows(np.concatenate(out))

    def encode_query(self, terms: list[str], text: str) -> np.ndarray:
        return self.encode([text])[0]
