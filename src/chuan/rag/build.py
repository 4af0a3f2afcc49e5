"""`chuan rag index`: corpus files -> a knowledge base dir (layout in `chuan.rag.kb`).

The work is split so that an interrupted run loses little and an update is all or nothing:

- each input file becomes one chunk shard, written atomically and named after the file's path,
  content (sha256) and the chunking settings; a shard whose counts file exists is complete and
  is reused, so running an interrupted command again resumes file by file;
- the index (BM25 statistics and dense vectors) depends on every chunk, so it is rebuilt from
  all shards, into a dir named after what it is built from; `manifest.json`, written last and
  atomically, switches the KB to it, and only then are the old index and unused shards removed.
  A run that stops at any point leaves the previous KB intact (or, for a new KB, no manifest).

`--add` keeps the KB's inputs and settings and appends new files: the result is the KB that
indexing all the files at once, in that order, would give, byte for byte. The same inputs and
settings give the same bytes in every run (sorted vocabularies, a fixed SVD start, no
timestamps).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import scipy
from tqdm import tqdm

import chuan
from chuan.documents import corpus_files
from chuan.errors import InputError, OutputExistsError
from chuan.fileio import atomic_dir, write_atomic, write_jsonl
from chuan.rag.analyzer import Analyzer
from chuan.rag.chunking import DEFAULT_CHUNK_CHARS, DEFAULT_OVERLAP, check_params, chunk_file
from chuan.rag.dense import DEFAULT_LSA_DIMS, VECTORS, LsaEncoder, ModelEncoder
from chuan.rag.kb import FORMAT, FORMAT_VERSION, MANIFEST, read_chunks, read_manifest
from chuan.rag.sparse import K1, B, SparseIndex

CHUNKS = "chunks"
INDEX_PREFIX = "index-"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _key(*parts) -> str:
    """A short stable name for what `parts` describe."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:16]


def _settings(add: bool, out: Path, chunk_chars, overlap, text_field, dense, overwrite) -> dict:
    """The run's settings: the KB's own under --add (a flag that differs is refused), the
    flags or defaults for a new KB."""
    given = {"chunk_chars": chunk_chars, "overlap": overlap, "text_field": text_field,
             "dense": dense}  # fmt: skip
    if not add:
        if (out / MANIFEST).is_file() and not overwrite:
            raise OutputExistsError(
                f"{out} is already a knowledge base: pass --add to add documents to it, or "
                "--overwrite to rebuild it"
            )
        if out.exists() and overwrite:
            shutil.rmtree(out)
        elif out.exists() and any(not _is_kb_part(p) for p in out.iterdir()):
            raise OutputExistsError(
                f"{out} already exists and is not a knowledge base; choose another --out or "
                "pass --overwrite"
            )
        defaults = {"chunk_chars": DEFAULT_CHUNK_CHARS, "overlap": DEFAULT_OVERLAP,
                    "text_field": "text", "dense": "none"}  # fmt: skip
        return {name: defaults[name] if value is None else value for name, value in given.items()}
    manifest = read_manifest(out)
    kb = {**manifest["chunking"], "dense": _dense_spec(manifest["dense"])}
    for name, value in given.items():
        if value is not None and value != kb[name]:
            flag = "--" + name.replace("_", "-")
            raise InputError(
                f"{flag} {value} differs from the knowledge base's {kb[name]}: --add keeps the "
                f"settings of {out}; drop the flag, or rebuild with --overwrite"
            )
    return kb


def _is_kb_part(path: Path) -> bool:
    return path.name in (CHUNKS, MANIFEST) or path.name.startswith((INDEX_PREFIX, "."))


def _dense_spec(dense: dict) -> str:
    return dense["model"] if dense["kind"] == "model" else dense["kind"]


def build_kb(
    inputs,
    out: str | Path,
    *,
    chunk_chars: int | None = None,
    overlap: int | None = None,
    text_field: str | None = None,
    dense: str | None = None,
    lsa_dims: int = DEFAULT_LSA_DIMS,
    add: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Index `inputs` (files and dirs of any corpus format) into the KB dir `out`; returns
    the manifest. See the module docstring for `add` and resuming."""
    out = Path(out)
    settings = _settings(add, out, chunk_chars, overlap, text_field, dense, overwrite)
    check_params(settings["chunk_chars"], settings["overlap"])
    old = read_manifest(out) if add else None
    analyzer = Analyzer.from_settings(old["analyzer"]) if old else Analyzer.default()
    encoder = None
    if settings["dense"] not in ("none", "lsa"):  # a model dir: fail before any work
        encoder = ModelEncoder(settings["dense"], device=device)

    entries = list(old["inputs"]) if old else []
    files = _new_files(corpus_files(inputs, exclude=out), entries)
    chunking = {name: settings[name] for name in ("chunk_chars", "overlap", "text_field")}
    bar = tqdm(files, desc="chunking", unit="file", disable=not progress)
    for path in bar:
        entries.append(_shard(out, path, chunking))
        bar.set_postfix(chunks=sum(e["chunks"] for e in entries))
    bar.close()

    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "chuan": chuan.__version__,
        "libraries": {name: importlib.metadata.version(name) for name in ("bm25s",)}
        | {"numpy": np.__version__, "scipy": scipy.__version__},
        "analyzer": analyzer.settings(),
        "chunking": chunking,
        "bm25": {"k1": K1, "b": B, "method": "lucene"},
        "inputs": entries,
        "counts": {
            "files": len(entries),
            "documents": sum(e["documents"] for e in entries),
            "chunks": sum(e["chunks"] for e in entries),
        },
    }
    chunks = read_chunks(out, manifest)
    terms = [
        analyzer.terms(c["text"])
        for c in tqdm(chunks, desc="analyzing", unit="chunk", disable=not progress)
    ]
    manifest["counts"]["terms"] = sum(len(t) for t in terms)
    fingerprint = _key([e["shard"] for e in entries], analyzer.settings(), manifest["bm25"],
                       settings["dense"], lsa_dims, FORMAT_VERSION)  # fmt: skip
    manifest["index"] = INDEX_PREFIX + fingerprint
    with atomic_dir(out / manifest["index"], overwrite=True) as tmp:
        sparse = SparseIndex.build(terms, k1=K1, b=B)
        sparse.save(tmp / "bm25")
        manifest["counts"]["vocabulary"] = len(sparse.vocab)
        manifest["dense"] = _build_dense(
            tmp / "dense", settings["dense"], encoder, chunks, terms, sparse, lsa_dims, progress
        )
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    _remove_unused(out, manifest)
    return manifest


def _new_files(files: list[Path], entries: list[dict]) -> list[Path]:
    """`files` without repeats and without those the KB already holds (said on stderr); a
    file the KB holds with other content is refused (its old chunks would stay)."""
    known = {e["path"]: e["sha256"] for e in entries}
    fresh: list[Path] = []
    for path in files:
        if str(path) in known:
            if known[str(path)] != file_sha256(path):
                raise InputError(
                    f"{path} is in the knowledge base with other content: rebuild it with "
                    "--overwrite to index the new version"
                )
            print(f"skipping {path}: already in the knowledge base", file=sys.stderr)
        elif path not in fresh:
            fresh.append(path)
    return fresh


def _shard(out: Path, path: Path, chunking: dict) -> dict:
    """The manifest entry of one input file, chunking it unless its shard is complete."""
    sha = file_sha256(path)
    key = _key(str(path), sha, chunking)
    shard = out / CHUNKS / f"{key}.jsonl"
    counts_file = shard.with_suffix(".json")
    if counts_file.is_file():
        counts = json.loads(counts_file.read_text(encoding="utf-8"))
    else:
        documents = list(chunk_file(path, **chunking))
        chunks = [chunk.to_record() for chunks in documents for chunk in chunks]
        write_jsonl(shard, chunks)
        counts = {"documents": len(documents), "chunks": len(chunks)}
        write_atomic(counts_file, json.dumps(counts) + "\n")
    return {
        "path": str(path),
        "sha256": sha,
        "bytes": path.stat().st_size,
        "shard": f"{CHUNKS}/{shard.name}",
        **counts,
    }


def _build_dense(path: Path, spec: str, encoder, chunks, terms, sparse, lsa_dims, progress):
    """Write the dense vectors (if any) under `path`; returns the manifest's `dense` entry."""
    if spec == "none":
        return {"kind": "none"}
    path.mkdir()
    if spec == "lsa":
        if progress:
            print(f"LSA: truncated SVD of {len(chunks):,} chunks", file=sys.stderr)
        encoder, vectors = LsaEncoder.fit(terms, sparse.vocab, lsa_dims)
        encoder.save(path)
    else:
        with tqdm(total=len(chunks), desc="embedding", unit="chunk", disable=not progress) as bar:
            vectors = encoder.encode([c["text"] for c in chunks], progress=bar)
    np.save(path / VECTORS, vectors.astype(np.float32))
    return encoder.settings()


def _remove_unused(out: Path, manifest: dict) -> None:
    """Old index dirs and shards the manifest no longer names (after it is written)."""
    for index in out.glob(f"{INDEX_PREFIX}*"):
        if index.name != manifest["index"]:
            shutil.rmtree(index)
    used = {Path(e["shard"]).stem for e in manifest["inputs"]}
    for shard in (out / CHUNKS).glob("*.json*"):
        if shard.name.split(".")[0] not in used:
            shard.unlink()
