"""`chuan quantize`: weight-only int8 / int4 quantization of a model dir."""

from __future__ import annotations

import argparse

from chuan.cli.options import int_at_least


def _quantize(args: argparse.Namespace) -> None:
    from chuan.fileio import REPORT_MD
    from chuan.infer.quantize import quantize_dir, render_memory_table, write_report

    report = quantize_dir(
        args.model, args.out, bits=args.bits, group_size=args.group_size, overwrite=args.overwrite
    )
    print(render_memory_table(report.memory_table))
    if args.eval_text:
        from chuan.eval.perplexity import compare_perplexity

        report.add_perplexity(
            compare_perplexity(
                {"before": args.model, "after": args.out},
                args.eval_text,
                max_tokens=args.eval_tokens,
                max_length=args.eval_window,
                device=args.device,
            )
        )
        write_report(report, args.out)
        p = report.perplexity
        print(
            f"held-out perplexity on {p['tokens']:,} tokens: {p['before']:.4f} -> "
            f"{p['after']:.4f} ({p['relative_change']:+.2%})"
        )
    print(
        f"wrote {args.out}: {report.scheme}, {report.quantized_linears} Linears, weights "
        f"{report.source_bytes / 2**20:,.1f} -> {report.output_bytes / 2**20:,.1f} MiB; "
        f"report in {args.out}/{REPORT_MD}"
    )


def register(verbs: argparse._SubParsersAction) -> None:
    from chuan.infer.quantize import DEFAULT_GROUP_SIZE

    parser = verbs.add_parser(
        "quantize",
        help="weight-only int8 / int4 quantization of a model dir",
        description="Quantize the five Linears per layer that Baichuan quantizes (W_pack, "
        "o_proj, gate_proj, up_proj, down_proj); embeddings, norms and the output head stay in "
        "floating point, a NormHead is stored normalised once. int8: symmetric per output "
        "channel (scale = max|W_row| / 127). int4: asymmetric min-max per group of "
        "--group-size inputs, two codes per byte. Activations are not quantized. Writes a "
        "model dir (safetensors + quantization_config in config.json, tokenizer and "
        "generation config copied) that chat / serve / eval load, plus report.md and "
        "report.json with the weight-memory table of this model, Baichuan2-7B and -13B.",
    )
    parser.add_argument(
        "model", metavar="MODEL", help="unquantized model dir (chuan, Baichuan or HF LLaMA)"
    )
    parser.add_argument("out", metavar="OUT", help="quantized model dir to write")
    parser.add_argument(
        "--bits", type=int, choices=[8, 4], required=True, help="weight bits: 8 or 4"
    )
    parser.add_argument(
        "--group-size",
        type=int_at_least(2),
        metavar="G",
        help=f"int4 only: inputs per scale/min group (default {DEFAULT_GROUP_SIZE}; PyTorch's "
        "CPU kernel takes 32, 64, 128 or 256, other even sizes dequantize per forward)",
    )
    parser.add_argument(
        "--eval-text",
        metavar="FILE",
        help="UTF-8 text (one document per line) to measure held-out perplexity on, before "
        "and after, exactly as `chuan eval ppl --lines` scores it (needs tokenizer files in "
        "MODEL)",
    )
    parser.add_argument(
        "--eval-tokens",
        type=int_at_least(1),
        metavar="N",
        default=8192,
        help="evaluate the leading lines of --eval-text that fit in N scored tokens (default 8192)",
    )
    parser.add_argument(
        "--eval-window",
        type=int_at_least(1),
        metavar="N",
        default=512,
        help="tokens per sliding window (--max-length of `chuan eval ppl`), capped at the "
        "model's context (default 512)",
    )
    parser.add_argument(
        "--device",
        metavar="DEV",
        help="device for --eval-text (default: the first GPU, else the CPU); quantizing "
        "itself runs on the CPU",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.set_defaults(func=_quantize)
