"""Config fields, presets and sizing against the numbers published for the real models."""

from pathlib import Path

import pytest

from chuan.model import BaichuanConfig, parameter_count, preset_config, swiglu_intermediate_size
from chuan.model.presets import PRESETS, training_flops_per_token


@pytest.mark.parametrize(
    ("preset", "total", "non_embedding"),
    [
        ("baichuan2-7b", 7_505_973_248, 6_476_271_616),
        ("baichuan2-13b", 13_896_668_160, 12_609_541_120),
        ("baichuan-7b", 7_000_559_616, 6_476_271_616),
        ("baichuan-13b", 13_264_901_120, 12_609_541_120),
    ],
)
def test_released_parameter_counts(preset, total, non_embedding):
    config = preset_config(preset)
    assert parameter_count(config) == total
    assert parameter_count(config, non_embedding=True) == non_embedding


def test_parameter_count_matches_instantiated_tiny_models():
    from chuan.model import BaichuanForCausalLM

    for name in ("tiny", "tiny-alibi"):
        model = BaichuanForCausalLM(preset_config(name))
        assert sum(p.numel() for p in model.parameters()) == parameter_count(model.config)
        assert 1_000_000 <= parameter_count(model.config) <= 3_000_000


def test_swiglu_width_rule():
    assert swiglu_intermediate_size(4096) == 11008
    assert swiglu_intermediate_size(5120) == 13696


def test_preset_shapes_follow_the_reports():
    assert preset_config("baichuan2-13b").position_encoding == "alibi"
    assert preset_config("baichuan2-7b").position_encoding == "rope"
    assert preset_config("baichuan2-7b").norm_head and not preset_config("baichuan-7b").norm_head
    assert all(preset_config(n).head_dim == 128 for n in PRESETS if n.startswith("baichuan"))
    assert preset_config("tiny-alibi").position_encoding == "alibi"


def test_training_flops_is_palm_formula():
    config = preset_config("baichuan2-7b")
    n = parameter_count(config) - config.vocab_size * config.hidden_size
    assert training_flops_per_token(config, 4096) == 6 * n + 12 * 32 * 4096 * 4096


def test_released_config_layouts_are_inferred():
    thirteen = BaichuanConfig(
        hidden_size=5120,
        num_attention_heads=40,
        model_max_length=4096,
        vocab_size=125696,
        gradient_checkpointing=[False],
        auto_map={"AutoConfig": "configuration_baichuan.X"},
    )
    assert thirteen.position_encoding == "alibi" and thirteen.norm_head
    assert thirteen.max_position_embeddings == thirteen.model_max_length == 4096
    assert "gradient_checkpointing" not in thirteen.to_dict()
    assert "auto_map" not in thirteen.to_dict()
    seven_v1 = BaichuanConfig(max_position_embeddings=4096, vocab_size=64000)
    assert seven_v1.position_encoding == "rope" and not seven_v1.norm_head


def test_invalid_configs_name_the_field():
    with pytest.raises(ValueError, match="position_encoding"):
        BaichuanConfig(position_encoding="nope")
    with pytest.raises(ValueError, match="num_key_value_heads"):
        BaichuanConfig(num_attention_heads=32, num_key_value_heads=5)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("baichuan3")


def test_config_reference_is_generated_from_the_dataclasses():
    """docs/config-reference.md must be what the script writes now (re-run it after a change)."""
    import runpy

    root = Path(__file__).resolve().parents[2]
    script = runpy.run_path(str(root / "scripts" / "make_config_reference.py"))
    on_disk = (root / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert script["render"]() == on_disk, "run: python scripts/make_config_reference.py"
