"""MinHash signatures for Chinese and English documents, and the LSH band parameters.

Shingles (see docs/data.md, "Deduplication"):

- every text is NFKC-normalised and lower-cased;
- a document whose letters and digits are at least `CJK_SHARE` CJK (Han, kana, Hangul) is
  shingled by **characters**, with punctuation and whitespace removed first; any other document
  by **words** (runs of letters and digits, punctuation and whitespace are separators). Chinese is
  never split on `\\W`, which would make a whole clause one token (ChenghaoMou/text-dedup#103);
- a shingle is `ngram` consecutive units (default 5 characters or 5 words); a text shorter than
  `ngram` units is one shingle, so short texts keep distinct signatures instead of all sharing an
  empty one (the fault fixed by OpenDCAI/DataFlow#526).

Hashing is vectorised numpy over a whole batch of documents, no Python loop per shingle or per
document (per-token Python hashing crawls, datajuicer/data-juicer#849):

- a shingle is a span of the normalised text; its hash is a polynomial over the span's code
  points modulo 2^64, computed for all spans at once from one prefix sum, then scrambled with
  the murmur3 finalizer and cut to 32 bits. Words and character n-grams share this code path;
- permutation i maps a 32-bit shingle hash x to `(a_i * x + b_i) mod 2^64 >> 32` with random 64-bit
  a_i, b_i (multiply-add-shift, a strongly universal family for 32-bit keys). It needs no modulo
  by a prime and is about 6x faster in numpy than datasketch's `(a*x + b) mod (2^61 - 1)`;
- minima are taken over blocks of at most `BLOCK_BYTES` of workspace, whole batches of documents
  per numpy call (`np.minimum.reduceat`), so a long document never materialises its full
  shingles x permutations matrix (which runs out of memory: datajuicer/data-juicer#1034) and
  short documents pay no per-document numpy overhead.

LSH: `optimal_bands` picks bands x rows as datasketch does (minimise 0.5 * false-positive area +
0.5 * false-negative area under the S-curve `P(s) = 1 - (1 - s^r)^b`, over b * r <= num_perm). The
areas are integrals of polynomials of degree <= num_perm, so Gauss-Legendre quadrature with
num_perm / 2 + 1 nodes computes them exactly (no scipy needed).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from chuan.errors import InputError

NGRAM = 5
# A document is shingled by characters when at least this share of its letters/digits is CJK.
CJK_SHARE = 0.2
# Workspace cap of one block of the shingles x permutations matrix (data-juicer caps at 8 MiB).
BLOCK_BYTES = 8 << 20
S_CURVE_POINTS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)

# Kana, CJK ideographs (with extension A and compatibility forms), Hangul, extensions B-G.
_CJK_RANGES = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7AF),
               (0xF900, 0xFAFF), (0x20000, 0x3134F))  # fmt: skip
# Odd base of the polynomial span hash; odd, so it is invertible modulo 2^64.
_BASE = 0x9E3779B97F4A7C15
_BASE_INV = pow(_BASE, -1, 1 << 64)
_U32 = np.uint64(32)
_SPACE = ord(" ")


@lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray]:
    """Per code point: is it a letter or digit (`str.isalnum`, what Python's `[\\W_]` leaves
    out), and is it CJK. Built once per process (about 0.1 s), then one numpy lookup per batch
    replaces a regex pass per document."""
    word = np.fromiter((chr(c).isalnum() for c in range(0x110000)), bool, 0x110000)
    cjk = np.zeros(0x110000, bool)
    for lo, hi in _CJK_RANGES:
        cjk[lo : hi + 1] = True
    return word, cjk


@dataclass
class Forms:
    """A batch of documents in their shingle forms, as code points: `codes[offsets[d] :
    offsets[d + 1]]` is document d's form, shingled by characters where `by_chars[d]`."""

    codes: np.ndarray  # uint32
    offsets: np.ndarray  # int64, documents + 1
    by_chars: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.by_chars)

    def text(self, d: int) -> str:
        return self.data(d).decode("utf-32-le")

    def data(self, d: int) -> bytes:
        return self.codes[self.offsets[d] : self.offsets[d + 1]].tobytes()


def shingle_forms(texts: Sequence[str]) -> Forms:
    """The shingle forms of a batch: NFKC and lower case; then a CJK document (letters and
    digits at least `CJK_SHARE` CJK) keeps only its letters and digits, any other document its
    words (runs of letters and digits) joined by single spaces.

    Normalisation is `unicodedata` per document; everything after it runs on the code points
    of the whole batch at once (table lookups, cumulative sums), about 5x faster than a regex
    pass per document."""
    codes, doc, offsets = _folded_codes(texts)
    if not len(codes):
        return Forms(codes, np.zeros(len(texts) + 1, np.int64), np.zeros(len(texts), bool))
    word_table, cjk_table = _tables()
    word = word_table[codes]
    letters = np.bincount(doc[word], minlength=len(texts))
    cjk = np.bincount(doc[word & cjk_table[codes]], minlength=len(texts))
    by_chars = (cjk > 0) & (cjk >= CJK_SHARE * letters)
    # In word documents the first non-word character of each gap between two words becomes
    # the separating space: one follows a word character of its document, and a word character
    # of its document comes later.
    words_through = np.cumsum(word)
    after = words_through[np.maximum(offsets[1:] - 1, 0)][doc] - words_through
    previous_is_word = np.zeros(len(codes), bool)
    previous_is_word[1:] = word[:-1] & (doc[1:] == doc[:-1])
    gap = ~word & previous_is_word & (after > 0) & ~by_chars[doc]
    keep = word | gap
    form_codes = np.where(gap, np.uint32(_SPACE), codes)[keep]
    form_offsets = np.concatenate(([0], np.cumsum(np.bincount(doc[keep], minlength=len(texts)))))
    return Forms(form_codes, form_offsets, by_chars)


def shingle_form(text: str) -> tuple[str, bool]:
    """`shingle_forms` of one text, as (form, by characters?)."""
    forms = shingle_forms([text])
    return forms.text(0), bool(forms.by_chars[0])


def squeeze(text: str) -> str:
    """`text` folded, with every punctuation and whitespace character removed (the Chinese
    shingling form, and the key of sentence dedup)."""
    return squeezed_forms([text]).text(0)


def squeezed_forms(texts: Sequence[str]) -> Forms:
    """Every text folded with only its letters and digits kept (`by_chars` all true)."""
    codes, doc, _ = _folded_codes(texts)
    word = _tables()[0][codes]
    offsets = np.concatenate(([0], np.cumsum(np.bincount(doc[word], minlength=len(texts)))))
    return Forms(codes[word], offsets, np.ones(len(texts), bool))


def is_cjk(squeezed: str) -> bool:
    """Whether a squeezed text is shingled by characters (its CJK share >= `CJK_SHARE`)."""
    return bool(shingle_forms([squeezed]).by_chars[0])


def _folded_codes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(code points of all texts after NFKC and lower case, document of each, offsets)."""
    # ASCII is its own NFKC form, and `isascii` is a flag lookup.
    folded = [
        (text if text.isascii() else unicodedata.normalize("NFKC", text)).lower() for text in texts
    ]
    lengths = np.fromiter(map(len, folded), np.int64, len(folded))
    codes = np.frombuffer("".join(folded).encode("utf-32-le"), dtype=np.uint32)
    doc = np.repeat(np.arange(len(folded)), lengths)
    return codes, doc, np.concatenate(([0], np.cumsum(lengths)))


def shingle_strings(text: str, ngram: int | None = None) -> set[str]:
    """The shingle set as strings: the plain reference that `shingle_hashes` vectorises (used by
    tests)."""
    n = ngram or NGRAM
    form, by_chars = shingle_form(text)
    units: Sequence[str] = form if by_chars else form.split()
    if len(units) <= n:
        return {form}
    sep = "" if by_chars else " "
    return {sep.join(units[i : i + n]) for i in range(len(units) - n + 1)}


def shingle_hashes(text: str, ngram: int | None = None) -> np.ndarray:
    """32-bit hashes (as uint64) of the shingles of `text`: one per span, duplicates allowed."""
    hashes, _ = form_hashes(shingle_forms([text]), ngram)
    return hashes


def form_hashes(forms: Forms, ngram: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, counts): the 32-bit shingle hashes (as uint64) of a batch of forms, document
    after document, and how many belong to each document (at least one)."""
    n = ngram or NGRAM
    codes = forms.codes.astype(np.uint64)
    starts, ends, counts = _shingle_spans(codes, forms.offsets, forms.by_chars, n)
    return _fmix64(_span_hashes(codes, starts, ends)) >> _U32, counts


def _shingle_spans(
    codes: np.ndarray, offsets: np.ndarray, by_chars: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[start, end) spans (positions in the concatenated batch) of the n-gram shingles of every
    document, in document order, and their count per document; a document shorter than n units
    is one whole-text span."""
    lengths = np.diff(offsets)
    # Units and their [start, end) per document: characters, or words between single spaces
    # (only word forms contain spaces, and no form starts or ends with one).
    spaces = np.flatnonzero(codes == _SPACE)
    words = np.bincount(np.searchsorted(offsets, spaces, "right") - 1, minlength=len(lengths)) + 1
    units = np.where(by_chars, lengths, words)
    counts = np.where(units > n, units - n + 1, 1)
    # Word boundaries of the non-empty word documents, in position order (masks, not a sort).
    listed = ~by_chars & (lengths > 0)
    boundary = np.zeros(len(codes) + 1, bool)
    boundary[offsets[:-1][listed]] = True
    boundary[spaces + 1] = True
    word_starts = np.flatnonzero(boundary)
    boundary[:] = False
    boundary[offsets[1:][listed]] = True
    boundary[spaces] = True
    word_ends = np.flatnonzero(boundary)
    listed_words = np.where(listed, words, 0)
    first_word = np.cumsum(listed_words) - listed_words

    doc = np.repeat(np.arange(len(lengths)), counts)
    k = np.arange(len(doc)) - np.repeat(np.cumsum(counts) - counts, counts)  # index in doc
    short = (units <= n)[doc]
    chars = by_chars[doc]
    starts = np.empty(len(doc), np.int64)
    ends = np.empty(len(doc), np.int64)
    at = chars & ~short
    starts[at] = offsets[doc[at]] + k[at]
    ends[at] = starts[at] + n
    at = ~chars & ~short
    starts[at] = word_starts[first_word[doc[at]] + k[at]]
    ends[at] = word_ends[first_word[doc[at]] + k[at] + n - 1]
    starts[short] = offsets[doc[short]]
    ends[short] = offsets[doc[short] + 1]
    return starts, ends, counts


def _span_hashes(codes: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """sum_{j in [s, e)} code_j * BASE^(e-1-j) mod 2^64 for every span, from one prefix sum of
    code_j * BASE^-j (so equal substrings hash equally wherever they are)."""
    powers, inverse_powers = _powers(len(codes) + 1)
    prefix = np.zeros(len(codes) + 1, np.uint64)
    np.cumsum(codes * inverse_powers[: len(codes)], out=prefix[1:])
    return (prefix[ends] - prefix[starts]) * powers[np.maximum(ends - 1, 0)]


def _powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE^j and BASE^-j mod 2^64 for j < size (cached; grown in powers of two)."""
    return _power_tables(max(1024, 1 << (size - 1).bit_length()))


@lru_cache(maxsize=4)
def _power_tables(size: int) -> tuple[np.ndarray, np.ndarray]:
    def table(base: int) -> np.ndarray:
        factors = np.full(size, base, np.uint64)
        factors[0] = 1
        return np.cumprod(factors)  # wraps modulo 2^64

    return table(_BASE), table(_BASE_INV)


def _fmix64(h: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finalizer: every input bit affects every output bit."""
    h = h ^ (h >> np.uint64(33))
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


class MinHasher:
    """`num_perm` seeded multiply-add-shift permutations applied to batches of shingle sets."""

    def __init__(self, num_perm: int = 128, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.a = rng.integers(0, 1 << 63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 1 << 63, num_perm, dtype=np.uint64)
        self.block_rows = max(1, BLOCK_BYTES // (8 * num_perm))

    def signatures(self, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """(documents, num_perm) uint32 minima of `form_hashes`' output: `hashes` of all
        documents one after another, `counts[d]` (at least 1) of them document d's."""
        counts = np.asarray(counts, np.int64)
        if (counts == 0).any():
            raise InputError("every document needs at least one shingle")
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        out = np.full((len(counts), self.num_perm), np.iinfo(np.uint32).max, np.uint32)
        for lo in range(0, len(hashes), self.block_rows):
            hi = min(lo + self.block_rows, len(hashes))
            first = np.searchsorted(starts, lo, side="right") - 1
            last = np.searchsorted(starts, hi - 1, side="right") - 1
            bounds = np.maximum(starts[first : last + 1], lo) - lo
            # Permutations x shingles, so each reduction runs over contiguous memory (about 5x
            # faster than reducing the transposed layout along axis 0).
            minima = np.minimum.reduceat(self._permute(hashes[lo:hi]), bounds, axis=1)
            np.minimum(out[first : last + 1], minima.T, out=out[first : last + 1])
        return out

    def _permute(self, hashes: np.ndarray) -> np.ndarray:
        work = self.a[:, None] * hashes[None, :]
        work += self.b[:, None]
        work >>= _U32
        return work


def candidate_probability(s, bands: int, rows: int):
    """P(two documents of Jaccard s share a band) = 1 - (1 - s^rows)^bands."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


def s_curve(bands: int, rows: int, points: Sequence[float] = S_CURVE_POINTS) -> dict[str, float]:
    """Candidate probability at a few similarities, as `{"0.8": 0.93, ...}` for reports."""
    return {f"{s:g}": round(float(candidate_probability(s, bands, rows)), 4) for s in points}


def optimal_bands(
    threshold: float,
    num_perm: int,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false-positive + false-negative areas; the first
    minimum in (bands, rows) order wins, as in datasketch. May leave permutations unused."""
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold must be in (0, 1), got {threshold}")
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands = np.array([p[0] for p in pairs], np.float64)[:, None]
    rows = np.array([p[1] for p in pairs], np.float64)[:, None]
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)

    def area(lo: float, hi: float, false_negative: bool) -> np.ndarray:
        s = (nodes + 1.0) * (hi - lo) / 2.0 + lo
        p = candidate_probability(s[None, :], bands, rows)
        return ((1.0 - p) if false_negative else p) @ weights * (hi - lo) / 2.0

    cost = false_positive_weight * area(0.0, threshold, False)
    cost = cost + false_negative_weight * area(threshold, 1.0, True)
    return pairs[int(np.argmin(cost))]


def band_keys(signatures: np.ndarray, bands: int, rows: int, seed: int = 0) -> np.ndarray:
    """(documents, bands) uint64: one 64-bit key per band of `rows` signature values; documents
    agree on a key exactly when they agree on the band (up to a 2^-64 collision chance)."""
    if bands * rows > signatures.shape[1]:
        raise InputError(f"{bands} bands x {rows} rows exceed {signatures.shape[1]} permutations")
    rng = np.random.default_rng([seed, 1])
    multipliers = rng.integers(0, 1 << 63, rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    keys = np.zeros((signatures.shape[0], bands), np.uint64)
    view = signatures[:, : bands * rows].reshape(-1, bands, rows).astype(np.uint64)
    for j in range(rows):
        keys += view[:, :, j] * multipliers[j]
    return _fmix64(keys + np.arange(bands, dtype=np.uint64))


def candidate_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) index pairs with u < v: every document joined to the first document of each band
    bucket it shares (star edges: enough for connected components), without repeats."""
    count = keys.shape[0]
    us, vs = [], []
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")
        ordered = keys[order, band]
        new = np.ones(count, bool)
        new[1:] = ordered[1:] != ordered[:-1]
        heads = order[np.maximum.accumulate(np.where(new, np.arange(count), 0))]
        us.append(heads[~new])
        vs.append(order[~new])
    if not us:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    edges = np.unique(np.concatenate(us).astype(np.int64) * count + np.concatenate(vs))
    return edges // count, edges % count
