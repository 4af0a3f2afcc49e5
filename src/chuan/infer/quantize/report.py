"""What quantizing a dir costs and gives: weight memory per precision (computed from the
shapes, beside Baichuan 2's published table), and `quantize_dir` with its report.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from chuan import fileio
from chuan.infer.quantize.formats import DEFAULT_GROUP_SIZE, INT4_SCALE_DTYPE, QLinear, QuantSpec
from chuan.infer.quantize.transform import model_from_state, quantize_model
from chuan.model.checkpoint import write_model_dir
from chuan.model.config import BaichuanConfig
from chuan.model.convert import read_as_baichuan
from chuan.model.presets import parameter_count, preset_config

# Baichuan 2 README, "Quantization Deployment" (GB; they are GiB: 7.5e9 bf16 params = 14.0).
PUBLISHED_GIB = {
    "Baichuan2-7B": {"bf16": 14.0, "int8": 8.0, "int4": 5.1},
    "Baichuan2-13B": {"bf16": 25.9, "int8": 14.2, "int4": 8.6},
}
_GIB = 1024**3


# ---- memory -------------------------------------------------------------------------------


def linear_shapes(config: BaichuanConfig) -> list[tuple[int, int]]:
    """`(out, in)` of every target Linear of a model with `config`."""
    h, f = config.hidden_size, config.intermediate_size
    q_size = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    per_layer = {
        "W_pack": (q_size + 2 * kv, h),
        "o_proj": (h, q_size),
        "gate_proj": (f, h),
        "up_proj": (f, h),
        "down_proj": (h, f),
    }
    return list(per_layer.values()) * config.num_hidden_layers


def quantized_linear_bytes(out_features: int, in_features: int, spec: QuantSpec) -> int:
    """Bytes of one `QLinear`'s buffers."""
    if spec.bits == 8:
        return out_features * in_features + 4 * out_features
    groups = out_features * math.ceil(in_features / spec.group_size)
    return out_features * in_features // 2 + 2 * INT4_SCALE_DTYPE.itemsize * groups


def weight_bytes(
    config: BaichuanConfig, precision: str, group_size: int = DEFAULT_GROUP_SIZE
) -> int:
    """Weight bytes of a model with `config` in `fp32`, `bf16`, `int8` or `int4` (targets
    quantized, everything else bf16, as Baichuan's published table assumes)."""
    total = parameter_count(config)
    if precision in ("fp32", "bf16"):
        return total * (4 if precision == "fp32" else 2)
    spec = QuantSpec(8) if precision == "int8" else QuantSpec(4, group_size)
    shapes = linear_shapes(config)
    quantized = sum(quantized_linear_bytes(o, i, spec) for o, i in shapes)
    return quantized + 2 * (total - sum(o * i for o, i in shapes))


def memory_table(config: BaichuanConfig, group_size: int = DEFAULT_GROUP_SIZE) -> list[dict]:
    """Rows {model, fp32, bf16, int8, int4 (bytes), published (GiB)} for this model and, from
    their shapes, Baichuan2-7B and -13B."""
    rows = []
    models = {
        "this model": config,
        "Baichuan2-7B": preset_config("baichuan2-7b"),
        "Baichuan2-13B": preset_config("baichuan2-13b"),
    }
    for name, cfg in models.items():
        row = {"model": name}
        row |= {p: weight_bytes(cfg, p, group_size) for p in ("fp32", "bf16", "int8", "int4")}
        row["published_gib"] = PUBLISHED_GIB.get(name)
        rows.append(row)
    return rows


def render_memory_table(rows: list[dict]) -> str:
    """Markdown: GiB per precision, published values in brackets."""
    lines = [
        "| model | fp32 GiB | bf16 GiB | int8 GiB | int4 GiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        published = row.get("published_gib") or {}
        cells = []
        for p in ("fp32", "bf16", "int8", "int4"):
            cell = f"{row[p] / _GIB:.3g}" if row[p] >= _GIB / 100 else f"{row[p] / 2**20:.3g} MiB"
            if p in published:
                cell += f" (published {published[p]})"
            cells.append(cell)
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- the command --------------------------------------------------------------------------


@dataclass
class QuantizeReport:
    model: str
    out: str
    bits: int
    group_size: int | None
    scheme: str
    modules: list[str]
    quantized_linears: int
    norm_head_folded: bool
    source_bytes: int
    output_bytes: int
    weight_error: dict[str, float]
    memory_table: list[dict]
    perplexity: dict | None = None
    seconds: float = 0.0

    def add_perplexity(self, measured: dict) -> None:
        """Held-out perplexity `before` and `after` (and how it was measured), from
        `chuan.eval.perplexity.compare_perplexity`, with the relative change."""
        change = measured["after"] / measured["before"] - 1
        self.perplexity = {**measured, "relative_change": change}


def _dir_weight_bytes(model_dir: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors")) or sum(
        p.stat().st_size for p in Path(model_dir).glob("*.bin")
    )


def quantize_dir(
    src: str | Path,
    out: str | Path,
    *,
    bits: int,
    group_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> QuantizeReport:
    """Quantize the model dir `src` into the model dir `out` (atomically), then write
    `report.json` / `report.md` into `out`. The perplexity before and after is measured above
    this room (`chuan.eval.perplexity.compare_perplexity`); `write_report` adds it."""
    started = time.perf_counter()
    if bits == 4 and group_size is None:
        group_size = DEFAULT_GROUP_SIZE
    spec = QuantSpec(bits, group_size)
    config, state = read_as_baichuan(src)
    model = model_from_state(config, state, where=src)
    del state
    norm_head = bool(config.norm_head)
    errors = quantize_model(model, spec, progress=progress)
    count = sum(isinstance(m, QLinear) for m in model.modules())
    write_model_dir(out, model.config, model.state_dict(), side_files_from=src, overwrite=overwrite)
    del model
    report = QuantizeReport(
        model=str(src),
        out=str(out),
        bits=bits,
        group_size=spec.group_size,
        scheme=spec.scheme,
        modules=list(spec.modules),
        quantized_linears=count,
        norm_head_folded=norm_head,
        source_bytes=_dir_weight_bytes(src),
        output_bytes=_dir_weight_bytes(out),
        weight_error=errors,
        memory_table=memory_table(config, spec.group_size or DEFAULT_GROUP_SIZE),
    )
    report.seconds = time.perf_counter() - started
    write_report(report, out)
    return report


def render_report(report: QuantizeReport) -> str:
    """The human report: what was done, bytes, weight error, memory table, perplexity."""
    lines = [
        f"# chuan quantize: {report.model} -> {report.out}",
        "",
        f"- scheme: {report.scheme}; {report.quantized_linears} Linears "
        f"({', '.join(report.modules)}); embeddings, norms and head kept in floating point",
        "- NormHead folded into a normalised plain head: "
        + ("yes" if report.norm_head_folded else "no (the source has a plain head)"),
        f"- weight files: {report.source_bytes / 2**20:,.2f} MiB -> "
        f"{report.output_bytes / 2**20:,.2f} MiB",
        "- mean relative weight error ||W - deq(q(W))|| / ||W||: "
        + ", ".join(f"{k} {v:.4f}" for k, v in report.weight_error.items()),
        f"- took {report.seconds:.1f} s",
        "",
        "## Weight memory (targets quantized, the rest bf16; computed from the shapes)",
        "",
        render_memory_table(report.memory_table),
    ]
    if report.perplexity:
        p = report.perplexity
        lines += [
            "",
            f"## Held-out perplexity ({p['documents']:,} documents, {p['tokens']:,} tokens of "
            f"{p['text']}, windows of {p['window']}, {p['dtype']}; as `chuan eval ppl --lines`)",
            "",
            "| model | perplexity |",
            "|---|---:|",
            f"| unquantized | {p['before']:.4f} |",
            f"| int{report.bits} | {p['after']:.4f} ({p['relative_change']:+.2%}) |",
        ]
    return "\n".join(lines) + "\n"


def write_report(report: QuantizeReport, out: str | Path) -> None:
    fileio.write_report(out, asdict(report), render_report(report))
