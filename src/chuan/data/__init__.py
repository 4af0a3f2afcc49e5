"""Corpus I/O and processing: readers, cleaning, deduplication, mixing, packing."""
