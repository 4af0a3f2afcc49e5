"""Tokenizers: SentencePiece loading and HF files, training, vocabulary expansion, stats."""
