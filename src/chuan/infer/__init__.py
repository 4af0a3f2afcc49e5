"""Inference: generation with a KV cache, and (later) chat, serving, quantization, export."""
