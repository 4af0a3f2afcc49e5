"""AdaLoRA, prefix tuning, P-Tuning v2, prompt tuning and P-Tuning in `chuan sft` (peft's
implementations on chuan's Baichuan model): what trains, save and load, generation with
chuan's decoder and KV cache, learning on the translation set, packed rows on RoPE and ALiBi,
and `chuan lora merge`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chuan.align.adapters import apply_finetune
from chuan.align.sft import SFTTrainer
from chuan.align.sft_config import SFTConfig
from chuan.cli import main
from chuan.config import ConfigError, from_dict
from chuan.infer.generate import generate
from chuan.infer.loading import load_model
from chuan.infer.sampling import SamplingConfig
from chuan.model.checkpoint import init_model_dir
from chuan.model.convert import load_as_baichuan
from chuan.model.loss import IGNORE_INDEX
from chuan.train.distributed import close_world, init_world
from chuan.train.loop import evaluate
from helpers.sft_fixtures import TRANSLATIONS, sft_config

pytestmark = pytest.mark.interop  # peft adapters: CI runs these on the oldest peft too

METHODS = ["adalora", "prefix", "ptuning_v2", "prompt", "ptuning"]
VIRTUAL = ["prefix", "ptuning_v2", "prompt", "ptuning"]
# The parameters each method trains, by a piece of their names.
TRAINS = {
    "adalora": ("lora_A", "lora_B", "lora_E"),
    "prefix": ("prompt_encoder",),
    "ptuning_v2": ("prompt_encoder",),
    "prompt": ("prompt_encoder",),
    "ptuning": ("prompt_encoder",),
}
# Options small enough for the tiny model, with learning rates that make each method learn
# in 8 steps.
OPTIONS = {
    "adalora": {"adalora": {"init_r": 6, "target_r": 4}, "optim": {"lr": 5e-2}},
    "prefix": {"prefix": {"num_virtual_tokens": 8}, "optim": {"lr": 5e-3}},
    "ptuning_v2": {"prefix": {"num_virtual_tokens": 8}, "optim": {"lr": 2e-2}},
    "prompt": {"prompt": {"num_virtual_tokens": 8}, "optim": {"lr": 5e-2}},
    "ptuning": {"ptuning": {"num_virtual_tokens": 8, "hidden": 64}, "optim": {"lr": 5e-3}},
}


def _config(out: Path, base: Path, method: str) -> dict:
    return sft_config(
        out,
        base,
        finetune=method,
        seed=3,
        eval={"holdout": 24},
        checkpoint={"every": 100, "keep": 1},
        stages=[{"data": [{"path": str(TRANSLATIONS)}], "steps": 8}],
        **OPTIONS[method],
    )


_RUNS: dict[str, SFTTrainer] = {}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base_dir):
    """`method` -> its finished `SFTTrainer` (trained once per module)."""

    def run(method: str) -> SFTTrainer:
        if method not in _RUNS:
            out = tmp_path_factory.mktemp(method) / "run"
            cfg = from_dict(SFTConfig, _config(out, base_dir, method))
            world = init_world("cpu", "gloo")
            try:
                torch.manual_seed(cfg.seed)
                trainer = SFTTrainer(cfg, world)
                trainer.run(None)
            finally:
                close_world(world)
            trainer.model.eval()
            _RUNS[method] = trainer
        return _RUNS[method]

    return run


def _ids(vocab: int, *lengths: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("method", METHODS)
def test_only_the_methods_parameters_train_and_the_held_out_loss_falls(method, trained, base_dir):
    trainer = trained(method)
    model = trainer.model
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(any(piece in n for piece in TRAINS[method]) for n in names)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert not any(any(piece in n for piece in TRAINS[method]) for n in frozen)
    base = load_file(base_dir / "model.safetensors")
    state = model.get_base_model().state_dict()
    for key, value in base.items():
        # AdaLoRA wraps W_pack: its base weight is `...W_pack.base_layer.weight`
        got = state.get(key, state.get(key.replace(".weight", ".base_layer.weight")))
        torch.testing.assert_close(got, value, atol=0, rtol=0, msg=key)
    report = json.loads((trainer.run_dir / "report.json").read_text())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report["trainable_parameters"] == trainable
    world = init_world("cpu", "gloo")
    try:
        base_loss = evaluate(
            load_as_baichuan(base_dir), trainer.eval_rows, trainer.cfg, world, autocast=None
        )
    finally:
        close_world(world)
    assert report["eval_loss"] < base_loss - 0.3, (report["eval_loss"], base_loss)


@pytest.mark.parametrize("method", METHODS)
def test_saved_adapter_loads_to_the_same_logits(method, trained, base_dir):
    from peft import PeftModel

    trainer = trained(method)
    adapter = trainer.run_dir / "adapter"
    ids = torch.tensor(_ids(trainer.model.config.vocab_size, 12, 12, seed=1))
    with torch.no_grad():
        expected = trainer.model(input_ids=ids).logits
        loaded = PeftModel.from_pretrained(load_as_baichuan(base_dir), str(adapter)).eval()
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
        via_chuan = load_model(base_dir, device="cpu", dtype="fp32", adapter=adapter)
        torch.testing.assert_close(via_chuan(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_decoder_with_kv_cache_equals_a_no_cache_greedy_loop(method, trained):
    """Left-padded rows of different lengths: the virtual tokens stay before each prompt."""
    model = trained(method).model
    prompts = _ids(model.config.vocab_size, 9, 5, 13, seed=2)
    new = 8
    got = generate(model, prompts, SamplingConfig(max_new_tokens=new, stop_token_ids=()))
    for prompt, tokens in zip(prompts, got, strict=True):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(new):
                logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits
                ids.append(int(logits[0, -1].argmax()))
        assert tokens == ids[len(prompt) :]


@pytest.fixture(scope="module")
def alibi_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny-alibi"
    init_model_dir(out, "tiny-alibi", seed=4)
    return out


@pytest.mark.parametrize("position_encoding", ["rope", "alibi"])
@pytest.mark.parametrize("method", VIRTUAL)
def test_packed_sample_loss_equals_the_sample_alone(
    method, position_encoding, tiny_dir, alibi_dir, tmp_path
):
    """Each packed conversation sees the virtual tokens and counts positions after them."""
    base = tiny_dir if position_encoding == "rope" else alibi_dir
    cfg = from_dict(SFTConfig, _config(tmp_path, base, method))
    torch.manual_seed(0)
    model = apply_finetune(load_as_baichuan(base), cfg, total_steps=8).eval()
    with torch.no_grad():  # a prefix encoder starts near zero: move it somewhere visible
        for param in model.prompt_encoder.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    samples = _ids(model.config.vocab_size, 7, 5, 9, seed=3)
    row = [t for s in samples for t in s] + [0] * 3
    segments = [i + 1 for i, s in enumerate(samples) for _ in s] + [0] * 3
    start = 0
    for sample in samples:
        labels = torch.full((1, len(row)), IGNORE_INDEX)
        labels[0, start + 1 : start + len(sample)] = torch.tensor(sample[1:])
        with torch.no_grad():
            packed = model(
                input_ids=torch.tensor([row]),
                attention_mask=torch.tensor([segments]),
                labels=labels,
                loss_reduction="sum",
            ).loss
            # the first token has no label in SFT rows (it is never an answer token)
            alone = model(
                input_ids=torch.tensor([sample]),
                labels=torch.tensor([[IGNORE_INDEX, *sample[1:]]]),
                loss_reduction="sum",
            ).loss
        torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-5)
        start += len(sample)


def test_lora_merge_folds_adalora_and_refuses_a_prefix(trained, base_dir, tmp_path):
    adalora = trained("adalora")
    out = tmp_path / "merged"
    main(["lora", "merge", str(base_dir), str(adalora.run_dir / "adapter"), "--out", str(out)])
    ids = torch.tensor(_ids(adalora.model.config.vocab_size, 16, seed=4))
    merged = load_model(out, device="cpu", dtype="fp32")
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, adalora.model(input_ids=ids).logits, atol=1e-4, rtol=1e-4
        )
    prefix = trained("prefix").run_dir / "adapter"
    with pytest.raises(SystemExit, match="nothing to merge.*--adapter"):
        main(["lora", "merge", str(base_dir), str(prefix), "--out", str(tmp_path / "p")])
    assert not (tmp_path / "p").exists()


def test_prompt_learning_runs_write_the_adapter_only(trained):
    run_dir = trained("prefix").run_dir
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert not (run_dir / "model").exists()


def test_methods_beyond_lora_are_for_sft_only(tmp_path, base_dir):
    from chuan.align.dpo_config import DPOConfig

    config = sft_config(tmp_path, base_dir, finetune="prefix")
    with pytest.raises(ConfigError, match="chuan sft"):
        from_dict(DPOConfig, config)
    with pytest.raises(ConfigError, match="init_r"):
        from_dict(SFTConfig, config | {"finetune": "adalora", "adalora": {"init_r": 2}})


def test_adalora_reallocates_ranks_to_its_budget(trained):
    trainer = trained("adalora")
    config = json.loads((trainer.run_dir / "adapter" / "adapter_config.json").read_text())
    ranks = [sum(mask) for mask in config["rank_pattern"].values()]
    assert len(ranks) == 4  # one W_pack per block of the tiny model
    assert sum(ranks) == 4 * trainer.cfg.adalora.target_r
    assert len(set(ranks)) > 1  # moved between layers by importance


def test_adalora_penalty_is_peft_orthogonal_regulariser(trained):
    """chuan's term equals the one peft's AdaLoRA forward adds (its weight set to 1)."""
    from chuan.align.peft_methods import PEFT_ORTH_REG_OFF, orthogonality

    model = trained("adalora").model
    ids = torch.tensor(_ids(model.config.vocab_size, 10, seed=5))
    config = model.peft_config["default"]
    with torch.no_grad():
        without = model(input_ids=ids, labels=ids).loss
        config.orth_reg_weight = 1.0
        try:
            with_term = model(input_ids=ids, labels=ids).loss
        finally:
            config.orth_reg_weight = PEFT_ORTH_REG_OFF
        torch.testing.assert_close(with_term - without, orthogonality(model), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_generate_and_serve_with_a_prompt_learning_adapter(method, trained, base_dir, capsys):
    from fastapi.testclient import TestClient

    from chuan.infer.engine import load_engine
    from chuan.infer.server import create_app

    trainer = trained(method)
    adapter = trainer.run_dir / "adapter"
    prompt = _ids(trainer.model.config.vocab_size, 6, seed=6)[0]
    expected = generate(
        trainer.model, [prompt], SamplingConfig(max_new_tokens=6, stop_token_ids=())
    )
    ids = " ".join(map(str, prompt))
    argv = ["generate", str(base_dir), "--adapter", str(adapter), "--prompt-ids", ids]
    main([*argv, "--max-new-tokens", "6", "--device", "cpu", "--dtype", "fp32"])
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["new_ids"]
    assert got == expected[0][: len(got)] and got
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Translate into English: 我爱你。"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    with load_engine(base_dir, device="cpu", dtype="fp32", adapter=adapter) as engine:
        client = TestClient(create_app(engine, model_name="m", api_key=None))
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
