"""Flags several verb groups share."""

from __future__ import annotations

import argparse


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """`--device` and `--dtype`, resolved by `chuan.infer.loading.pick_device` / `pick_dtype`."""
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... (default: a GPU when there is one)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="weights dtype (default auto: bf16 on a GPU that has it, else fp32)",
    )
