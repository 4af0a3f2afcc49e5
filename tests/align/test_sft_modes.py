"""The other ways to fine-tune and to use the result: `freeze`, NEFTune, `--inspect`, and a
LoRA adapter used unmerged (`chat --adapter`, `serve --adapter`) or merged by
`chuan lora merge`, each checked against the model dir `chuan sft` merged itself."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chuan.align.adapters import add_neftune
from chuan.align.sft import SFTTrainer, sft
from chuan.align.sft_config import SFTConfig
from chuan.cli import main
from chuan.config import from_dict
from chuan.infer.loading import load_model
from chuan.train.distributed import close_world, init_world
from helpers.sft_fixtures import TRANSLATIONS, sft_config

pytestmark = pytest.mark.interop  # peft adapters: CI runs these on the oldest peft too


def _config(out: Path, base: Path, **fields) -> dict:
    """Four steps of LoRA r 4 (or what `fields` say), no checkpoint before the end."""
    small = {
        "seed": 3,
        "optim": {"lr": 5e-3},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["all-linear"]},
        "eval": {"holdout": 8},
        "checkpoint": {"every": 100, "keep": 1},
        "stages": [{"data": [{"path": str(TRANSLATIONS)}], "steps": 4}],
    }
    return sft_config(out, base, **(small | fields))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base_dir) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    sft(from_dict(SFTConfig, _config(out, base_dir, finetune="lora")))
    return out


def test_freeze_trains_only_the_last_blocks(tmp_path, base_dir):
    config = _config(tmp_path / "run", base_dir, finetune="freeze", freeze={"trainable_layers": 1})
    result = sft(from_dict(SFTConfig, config))
    base = load_file(base_dir / "model.safetensors")
    tuned = load_file(result.model_dir / "model.safetensors")
    assert base.keys() == tuned.keys()
    blocks = 1 + max(int(k.split(".")[2]) for k in base if k.startswith("model.layers."))
    trainable = (f"model.layers.{blocks - 1}.", "model.norm.")
    for key in base:
        changed = not torch.equal(base[key], tuned[key])
        assert changed == key.startswith(trainable), key
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["trainable_parameters"] == sum(
        t.numel() for k, t in base.items() if k.startswith(trainable)
    )


def test_neftune_noise_has_the_papers_scale_and_only_in_training(base_dir):
    """NEFTune adds Uniform(-1, 1) * alpha / sqrt(L d) to every embedding while training."""
    model = load_model(base_dir, device="cpu", dtype="fp32")
    embed = model.get_input_embeddings()
    ids = torch.randint(
        3, model.config.vocab_size, (4, 50), generator=torch.Generator().manual_seed(1)
    )
    clean = embed(ids).detach()
    alpha = 5.0
    add_neftune(model, alpha)
    model.train()
    noise = embed(ids).detach() - clean
    bound = alpha / math.sqrt(50 * model.config.hidden_size)
    assert noise.abs().max() <= bound * (1 + 1e-5)
    assert noise.abs().mean() == pytest.approx(bound / 2, rel=0.05)  # E|U(-b, b)| = b / 2
    model.eval()
    assert torch.equal(embed(ids), clean)


def test_neftune_alpha_reaches_the_trained_model(tmp_path, base_dir):
    cfg = from_dict(
        SFTConfig, _config(tmp_path / "run", base_dir, finetune="full", neftune_alpha=5.0)
    )
    ids = torch.randint(3, 300, (1, 16), generator=torch.Generator().manual_seed(0))
    world = init_world("cpu", None)
    try:
        model = SFTTrainer(cfg, world).model
        model.train()
        with torch.no_grad():
            first, second = model(input_ids=ids).logits, model(input_ids=ids).logits
    finally:
        close_world(world)
    assert not torch.allclose(first, second)


def test_inspect_prints_the_samples_and_trains_nothing(tmp_path, base_dir, capsys):
    config = tmp_path / "sft.json"
    config.write_text(json.dumps(_config(tmp_path / "run", base_dir)), encoding="utf-8")
    main(["sft", "--config", str(config), "--inspect", "2"])
    out = capsys.readouterr().out
    assert out.count("⟦") >= 2  # the answer of each of the two samples is marked trained
    assert "label" in out
    assert not (tmp_path / "run").exists()


def test_lora_merge_cli_gives_the_model_sft_merged(tmp_path, base_dir, lora_run, capsys):
    argv = ["lora", "merge", str(base_dir), str(lora_run / "adapter"), "--out", str(tmp_path / "m")]
    main(argv)
    assert "merged" in capsys.readouterr().out
    expected = load_file(lora_run / "model" / "model.safetensors")
    got = load_file(tmp_path / "m" / "model.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=0)
    assert (
        json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())["chuan_chat_template"]
        == "baichuan2"
    )
    with pytest.raises(SystemExit, match="exists"):  # an earlier output is kept
        main(
            [
                "lora",
                "merge",
                str(base_dir),
                str(lora_run / "adapter"),
                "--out",
                str(tmp_path / "m"),
            ]
        )


def test_chat_with_adapter_answers_as_the_merged_model(base_dir, lora_run, monkeypatch, capsys):
    replies = []
    for argv in (
        [str(lora_run / "model")],
        [str(base_dir), "--adapter", str(lora_run / "adapter")],
    ):
        monkeypatch.setattr("sys.stdin", io.StringIO("Translate into Chinese: I love you.\n"))
        main(["chat", *argv, "--temperature", "0", "--max-new-tokens", "16"])
        replies.append(capsys.readouterr().out)
    assert replies[0] == replies[1]
    assert replies[0].strip()


def test_serve_with_adapter_answers_as_the_merged_model(base_dir, lora_run):
    from fastapi.testclient import TestClient

    from chuan.infer.engine import load_engine
    from chuan.infer.server import create_app

    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Translate into English: 我爱你。"}],
        "max_tokens": 16,
        "temperature": 0,
    }
    answers = []
    for model, adapter in ((lora_run / "model", None), (base_dir, lora_run / "adapter")):
        with load_engine(model, device="cpu", dtype="fp32", adapter=adapter) as engine:
            client = TestClient(create_app(engine, model_name="m", api_key=None))
            response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        answers.append(response.json()["choices"][0]["message"]["content"])
    assert answers[0] == answers[1]
