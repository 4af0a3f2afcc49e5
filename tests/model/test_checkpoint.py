"""Model dirs on disk: exact round trips, released Baichuan layouts, the real tiny LLaMA."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import chuan  # noqa: F401  (registers the Auto classes)
from chuan.infer.generate import SamplingConfig, generate
from chuan.model import BaichuanForCausalLM, preset_config
from chuan.model.checkpoint import read_state_dict
from chuan.model.convert import convert

pytestmark = pytest.mark.interop  # CI runs these on the oldest supported transformers too


def test_save_load_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = BaichuanForCausalLM(preset_config("tiny-alibi"))
    model.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert isinstance(loaded, BaichuanForCausalLM)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert loaded.config.to_diff_dict() == model.config.to_diff_dict()


def test_init_uses_baichuan_initialisation(tiny_dir):
    state = read_state_dict(tiny_dir)
    assert torch.all(state["model.embed_tokens.weight"][0] == 0)  # padding row
    assert torch.all(state["model.norm.weight"] == 1)
    w = state["model.layers.0.mlp.up_proj.weight"]
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    assert set(json.loads((tiny_dir / "config.json").read_text())) >= {
        "max_position_embeddings",
        "model_max_length",
        "position_encoding",
        "norm_head",
    }


def _official_config(**fields) -> dict:
    """A config.json as Baichuan 2 publishes it (remote-code `auto_map`, no chuan fields)."""
    return {
        "architectures": ["BaichuanForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_baichuan.BaichuanConfig",
            "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
        },
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 176,
        "model_type": "baichuan",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "rms_norm_eps": 1e-06,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 125696,
        **fields,
    }


@pytest.mark.parametrize(
    ("length_fields", "encoding"),
    [
        ({"model_max_length": 4096, "gradient_checkpointing": [False]}, "alibi"),  # 13B
        ({"max_position_embeddings": 4096, "model_max_length": 4096, "z_loss_weight": 0}, "rope"),
    ],
)
def test_official_baichuan2_layout_loads_without_remote_code(tmp_path, length_fields, encoding):
    torch.manual_seed(0)
    reference = BaichuanForCausalLM(
        preset_config(
            "tiny",
            hidden_size=64,
            intermediate_size=176,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=125696,
            position_encoding=encoding,
        )
    ).eval()
    official = tmp_path / "Baichuan2-v2.0"  # a dot in the name broke remote-code imports
    official.mkdir()
    (official / "config.json").write_text(json.dumps(_official_config(**length_fields)))
    state = {k: v.to(torch.bfloat16) for k, v in reference.state_dict().items()}
    torch.save(state, official / "pytorch_model.bin")

    config = AutoConfig.from_pretrained(official)
    assert config.position_encoding == encoding and config.norm_head
    assert config.model_max_length == config.max_position_embeddings == 4096
    model = AutoModelForCausalLM.from_pretrained(official, dtype=torch.float32).eval()
    assert isinstance(model, BaichuanForCausalLM)
    ids = torch.randint(3, 125696, (1, 10))
    with torch.no_grad():
        expected = reference.to(torch.bfloat16).float()(ids).logits
        torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=0)

    # `chuan convert --to baichuan` rewrites it as safetensors with explicit fields.
    convert(official, tmp_path / "chuan", "baichuan")
    rewritten = json.loads((tmp_path / "chuan" / "config.json").read_text())
    assert rewritten["position_encoding"] == encoding and "auto_map" not in rewritten
    assert (tmp_path / "chuan" / "model.safetensors").is_file()
    assert all(torch.equal(state[k], v) for k, v in read_state_dict(tmp_path / "chuan").items())


def test_alibi_models_refuse_llama_export(tmp_path):
    BaichuanForCausalLM(preset_config("tiny-alibi")).save_pretrained(tmp_path / "alibi")
    with pytest.raises(ValueError, match="ALiBi"):
        convert(tmp_path / "alibi", tmp_path / "llama", "llama")
    assert not (tmp_path / "llama").exists()


def test_real_tiny_llama_reproduces_llama2c_greedy_output(test_data, tmp_path):
    """stories260K (GQA, tied head, interleaved RoPE) through HF LLaMA into chuan."""
    from helpers.llama2c import llama2c_to_hf_llama

    model_dir = test_data / "models" / "tinystories_260k"
    llama2c_to_hf_llama(model_dir / "stories260K.bin", tmp_path / "llama")
    convert(tmp_path / "llama", tmp_path / "baichuan", "baichuan")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "baichuan").eval()
    assert isinstance(model, BaichuanForCausalLM)
    assert model.config.num_key_value_heads == 4 and model.config.tie_word_embeddings
    expected = json.loads((model_dir / "expected_greedy_200_steps.ids.json").read_text())
    got = generate(model, [[1]], SamplingConfig(max_new_tokens=200, stop_token_ids=(2,)))[0]
    assert got == expected
