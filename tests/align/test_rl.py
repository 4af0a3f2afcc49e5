"""`chuan ppo` and `chuan grpo` on the tiny pretrained model with translation prompts from the
bundled Tatoeba set: rollout log-probs against teacher forcing, the first update's ratio and
KL, the critic warm-up, gradient clipping, learning a reward, the KL bound, exact resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chuan.align.rl import GRPOTrainer, PPOTrainer, grpo, ppo
from chuan.align.rl_config import GRPOConfig, PPOConfig
from chuan.align.rollout import response_logps, sample
from chuan.cli import main
from chuan.config import ConfigError, from_dict
from chuan.errors import InputError
from chuan.infer.loading import load_model
from chuan.infer.sampling import SamplingConfig
from chuan.model.convert import load_reward_model
from chuan.train.checkpoint import latest_checkpoint
from chuan.train.distributed import init_world
from helpers.cli_runs import chuan_process, finish, kill_after
from helpers.pretrain_fixtures import write_config
from helpers.sft_fixtures import TRANSLATIONS

REWARDS = Path(__file__).parents[1] / "helpers" / "rl_rewards.py"


def _config(out: Path, base: Path, **fields) -> dict:
    config = {
        "out": str(out),
        "model": str(base),
        "seed": 11,
        "max_length": 96,
        "micro_batch_size": 8,
        "finetune": "lora",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["all-linear"]},
        "optim": {"lr": 3e-3},
        "reward_function": f"{REWARDS}:brevity",
        "rollout": {"prompts": 4, "max_new_tokens": 16},
        "samples": {"prompts": 0},
        "checkpoint": {"every": 2, "keep": 2},
        "log": {"every": 1, "tensorboard": False, "progress": False},
        "stages": [{"data": [{"path": str(TRANSLATIONS)}], "steps": 4}],
    }
    return config | fields


def _grpo(cfg: dict) -> GRPOTrainer:
    return GRPOTrainer(from_dict(GRPOConfig, cfg), init_world("cpu", None))


def _metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_rollout_logprobs_equal_teacher_forced_ones(base_dir, sft_tokenizer):
    """Left-padded prompts of different lengths, sampled through the KV cache at T = 0.7:
    the generator's log-probs are the teacher-forced ones of the same tokens."""
    model = load_model(base_dir, device="cpu", dtype="fp32")
    prompts = [sft_tokenizer.encode(t) for t in ("In the beginning", "起初，神创造天地。", "And")]
    configs = [
        SamplingConfig(max_new_tokens=12, temperature=0.7, seed=i, stop_token_ids=(2,))
        for i in range(3)
    ]
    rollout = sample(model, prompts, configs)
    assert rollout.prompt_width == max(len(p) for p in prompts)
    assert rollout.response_mask.sum() > 12
    forced, _ = response_logps(model, rollout, 0.7, None)
    torch.testing.assert_close(forced, rollout.logprobs, atol=1e-5, rtol=0)
    assert (rollout.logprobs[rollout.response_mask == 0] == 0).all()


def test_first_update_has_ratio_one_and_zero_kl(tmp_path, base_dir):
    """Before any update the policy is the reference and the sampler: at the first epoch every
    token's ratio is 1 (nothing clipped, approx KL 0) and the KL to the reference is 0."""
    cfg = _config(tmp_path / "run", base_dir, kl_coef=0.1, ppo_epochs=2, minibatches=2)
    cfg["stages"][0]["steps"] = 1
    trainer = _grpo(cfg)
    seen = []
    update = trainer._update

    def spy(model, critic, rollout, rows, data, beta, train_actor, sums):
        before = dict(sums)
        update(model, critic, rollout, rows, data, beta, train_actor, sums)
        seen.append({k: float(sums[k] - before[k]) for k in sums})
        if len(seen) == 1:
            torch.testing.assert_close(data["old"], data["ref"], atol=1e-6, rtol=0)

    trainer._update = spy
    trainer.run(None)
    assert len(seen) == 4  # 2 epochs x 2 minibatches
    assert seen[0]["approx_kl"] < 1e-10 and seen[0]["clip_fraction"] == 0
    assert _metrics(tmp_path / "run")[-1]["kl"] == pytest.approx(0, abs=1e-5)


KL_BOUND = 15.0  # nats per completion: the learning runs stay this close to the reference


def test_grpo_learns_a_reward_function(tmp_path, base_dir):
    """A reward for short answers: the policy learns to stop early within 20 iterations, its
    KL to the reference (kl_coef 0.05) staying under the bound."""
    cfg = _config(tmp_path / "run", base_dir, group_size=4, kl_coef=0.05, eval={"holdout": 16})
    cfg["stages"][0]["steps"] = 20
    result = grpo(from_dict(GRPOConfig, cfg))
    records = [r for r in _metrics(tmp_path / "run") if "reward" in r]
    first, last = records[0]["reward"], sum(r["reward"] for r in records[-3:]) / 3
    print([(round(r["reward"], 3), round(r["kl"], 3)) for r in records])
    assert last > first + 0.4, (first, last)
    assert max(r["kl"] for r in records) < KL_BOUND
    report = json.loads((tmp_path / "run" / "report.json").read_text(encoding="utf-8"))
    assert report["held_out_last"]["eval_reward"] > report["held_out_first"]["eval_reward"]
    assert report["samples_last_iteration"] and (tmp_path / "run" / "rewards.png").is_file()
    assert (result.model_dir / "model.safetensors").is_file()
    markdown = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    prompts = report["data"]["samples"]
    assert f"- {prompts:,} prompts, " in markdown and "fill" not in markdown  # no rows in RL


def test_a_huge_kl_coefficient_keeps_the_policy_at_the_reference(tmp_path, base_dir):
    """The learning run's settings with beta 1e4: the reward stays where it started."""
    cfg = _config(tmp_path / "run", base_dir, group_size=4, kl_coef=1e4)
    cfg["stages"][0]["steps"] = 20
    grpo(from_dict(GRPOConfig, cfg))
    records = [r for r in _metrics(tmp_path / "run") if "reward" in r]
    first, last = records[0]["reward"], sum(r["reward"] for r in records[-3:]) / 3
    print([(round(r["reward"], 3), round(r["kl"], 3)) for r in records])
    assert abs(last - first) < 0.1 and max(r["kl"] for r in records) < 0.5


def test_a_group_with_one_reward_gives_no_gradient(tmp_path, base_dir):
    """Zero advantages everywhere: no step moves a weight (weight decay off, which moves
    them by itself)."""
    cfg = _config(
        tmp_path / "run",
        base_dir,
        group_size=4,
        reward_function=f"{REWARDS}:constant",
        optim={"lr": 3e-3, "weight_decay": 0.0},
    )
    cfg["stages"][0]["steps"] = 2
    trainer = _grpo(cfg)
    before = {k: v.clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    trainer.run(None)
    for name, param in trainer.model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, before[name]), name


def test_a_reward_function_returning_none_is_a_clear_error(tmp_path, base_dir):
    cfg = _config(tmp_path / "run", base_dir, group_size=2, reward_function=f"{REWARDS}:broken")
    with pytest.raises(InputError, match="broken: reward None for completion 0"):
        _grpo(cfg).run(None)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, base_dir) -> Path:
    """A reward model dir: the base with a new score head (as `chuan rm` starts one)."""
    from chuan.model.checkpoint import write_model_dir
    from chuan.model.convert import load_reward_model

    torch.manual_seed(3)
    model = load_reward_model(base_dir)
    out = tmp_path_factory.mktemp("rm") / "model"
    write_model_dir(out, model.config, model.state_dict())
    return out


def _ppo(cfg: dict) -> PPOTrainer:
    return PPOTrainer(from_dict(PPOConfig, cfg), init_world("cpu", None))


def test_ppo_warmup_trains_the_critic_only_and_clips_gradients(tmp_path, base_dir, reward_model):
    cfg = _config(
        tmp_path / "run",
        base_dir,
        reward_function=None,
        reward_model=str(reward_model),
        critic_warmup=2,
        ppo_epochs=2,
        finetune="full",
        optim={"lr": 1e-4, "grad_clip": 0.5},
    )
    cfg["stages"][0]["steps"] = 3
    trainer = _ppo(cfg)
    actor = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    critic = {k: v.clone() for k, v in trainer.critic.state_dict().items()}
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        total = clip(parameters, max_norm, *args, **kwargs)
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters])))
        return total

    steps = []
    iteration = trainer._iteration

    def watch(*args):
        stats = iteration(*args)
        steps.append(
            (
                all(torch.equal(v, actor[k]) for k, v in trainer.model.state_dict().items()),
                all(torch.equal(v, critic[k]) for k, v in trainer.critic.state_dict().items()),
            )
        )
        return stats

    trainer._iteration = watch
    torch.nn.utils.clip_grad_norm_ = spy
    try:
        trainer.run(None)
    finally:
        torch.nn.utils.clip_grad_norm_ = clip
    # iterations 0 and 1 warm the critic up: the actor is unchanged, the critic is not
    assert steps[0] == (True, False) and steps[1][0] is True
    assert steps[2][0] is False  # the actor trains from iteration 2
    assert norms and max(float(n) for n in norms) <= 0.5 + 1e-5
    records = [r for r in _metrics(tmp_path / "run") if "reward" in r]
    assert [r["kl_coef"] for r in records] == pytest.approx([0.2, 0.1025, 0.005])
    assert all("value_loss" in r and "clip_fraction" in r for r in records)


def test_ppo_learns_a_reward_function_within_the_kl_bound(tmp_path, base_dir):
    """PPO with a critic on the short-answer reward, Baichuan 2's settings but a LoRA
    learning rate and a 2-iteration warm-up: the reward rises, the KL stays bounded."""
    cfg = _config(
        tmp_path / "run",
        base_dir,
        critic_warmup=2,
        ppo_epochs=2,
        rollout={"prompts": 16, "max_new_tokens": 16},
    )
    cfg["stages"][0]["steps"] = 20
    ppo(from_dict(PPOConfig, cfg))
    records = [r for r in _metrics(tmp_path / "run") if "reward" in r]
    first, last = records[0]["reward"], sum(r["reward"] for r in records[-3:]) / 3
    print([(round(r["reward"], 3), round(r["kl"], 3), round(r["value_loss"], 4)) for r in records])
    assert last > first + 0.4, (first, last)
    assert max(r["kl"] for r in records) < KL_BOUND


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_ppo_writes_the_trained_critic_as_a_reward_model_dir(tmp_path, base_dir, finetune):
    """OUT/critic reloads (LoRA merged in) and scores every position as the trained critic
    does; `chuan rm score` and a later run's `critic:` read it."""
    cfg = _config(tmp_path / "run", base_dir, critic_warmup=1, finetune=finetune)
    cfg["stages"][0]["steps"] = 2
    trainer = _ppo(cfg)
    trainer.run(None)
    critic = load_reward_model(tmp_path / "run" / "critic", require_head=True).eval()
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    trainer.critic.eval()
    with torch.no_grad():
        trained = trainer.critic(input_ids=ids, every_position=True).logits
        reloaded = critic(input_ids=ids, every_position=True).logits
    torch.testing.assert_close(reloaded, trained, rtol=1e-4, atol=1e-5)


def test_sigkill_then_resume_ends_bit_identical(tmp_path, base_dir, reward_model):
    """PPO with a critic, sampling and a decaying KL coefficient, killed after a random
    iteration and resumed: the same adapter as an uninterrupted run."""

    def config(name):
        cfg = _config(
            tmp_path / name,
            base_dir,
            reward_function=None,
            reward_model=str(reward_model),
            critic_warmup=1,
            ppo_epochs=1,
            checkpoint={"every": 1, "keep": 2},
        )
        cfg["stages"][0]["steps"] = 5
        return write_config(tmp_path / f"{name}.yaml", cfg)

    finish(chuan_process("ppo", config("reference")))
    steps = random.Random().randrange(2, 5)  # a checkpoint is written after each logged step
    run = config("run")
    kill_after(chuan_process("ppo", run), tmp_path / "run", steps)
    assert latest_checkpoint(tmp_path / "run") is not None
    finish(chuan_process("ppo", run, "--resume", "auto"))
    name = "adapter/adapter_model.safetensors"
    expected, got = load_file(tmp_path / "reference" / name), load_file(tmp_path / "run" / name)
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{key} (killed after {steps})"
    rewards = {
        name: [(r["step"], r["reward"], r["kl"]) for r in _metrics(tmp_path / name) if "kl" in r]
        for name in ("reference", "run")
    }
    assert rewards["reference"] == rewards["run"]


@pytest.mark.parametrize(
    "verb, strategy",
    [("grpo", "ddp"), ("ppo", "fsdp")],
)
def test_two_ranks_sample_and_learn_what_one_process_does(
    tmp_path, base_dir, reward_model, verb, strategy
):
    """Two torchrun ranks (gloo) with 2 prompts each against one process with 4: the same
    prompts and seeds, so the same completions and rewards; the updates agree up to the order
    of summation. GRPO trains a LoRA adapter under DDP; PPO trains every weight of the actor
    and its critic under FSDP2, with the frozen reference and reward model sharded too, and
    samples on gathered weights while each rank stops at its own rows' ends."""
    runs = {}
    extra = {}
    if verb == "ppo":
        extra = {
            "reward_function": None,
            "reward_model": str(reward_model),
            "critic_warmup": 1,
            "finetune": "full",
            "optim": {"lr": 1e-4},
        }
    for name, per_rank in (("single", 4), ("ranks", 2)):
        cfg = _config(
            tmp_path / name,
            base_dir,
            group_size=2,
            rollout={"prompts": per_rank, "max_new_tokens": 16},
            distributed={"strategy": strategy},
            **extra,
        )
        if verb == "ppo":
            del cfg["group_size"]
        cfg["stages"][0]["steps"] = 3
        config = write_config(tmp_path / f"{name}.yaml", cfg)
        finish(chuan_process(verb, config, nproc=1 if name == "single" else 2))
        runs[name] = [r for r in _metrics(tmp_path / name) if "reward" in r]
    for single, ranks in zip(runs["single"], runs["ranks"], strict=True):
        assert single["reward"] == pytest.approx(ranks["reward"], abs=1e-6)
        assert single["tokens"] == ranks["tokens"]
        assert ranks["loss"] == pytest.approx(single["loss"], abs=1e-5)
    name = "adapter/adapter_model.safetensors" if verb == "grpo" else "model/model.safetensors"
    single, ranks = load_file(tmp_path / "single" / name), load_file(tmp_path / "ranks" / name)
    for key in single:
        torch.testing.assert_close(ranks[key], single[key], atol=1e-5, rtol=0)


def test_settings_are_checked(tmp_path, base_dir):
    with pytest.raises(ConfigError, match="exactly one reward"):
        from_dict(GRPOConfig, _config(tmp_path, base_dir, reward_model="x"))
    with pytest.raises(ConfigError, match="no room"):
        from_dict(GRPOConfig, _config(tmp_path, base_dir, rollout={"max_new_tokens": 96}))
    cfg = _config(tmp_path, base_dir, reward_function="no_such_module:f")
    with pytest.raises(InputError, match="cannot import 'no_such_module'"):
        _grpo(cfg)


def test_baichuan2_settings_are_the_ppo_defaults(tmp_path, base_dir):
    cfg = from_dict(PPOConfig, _config(tmp_path, base_dir, optim={}))
    assert (cfg.critic_warmup, cfg.clip, cfg.kl_coef, cfg.kl_coef_final) == (20, 0.1, 0.2, 0.005)
    assert (cfg.optim.grad_clip, cfg.optim.lr, cfg.optim.schedule) == (0.5, 5e-6, "constant")


def test_inspect_shows_prompts_with_their_references(tmp_path, base_dir, capsys):
    config = write_config(tmp_path / "grpo.yaml", _config(tmp_path / "run", base_dir))
    main(["grpo", "--config", str(config), "--inspect", "2"])
    shown = capsys.readouterr().out
    assert shown.count("reference: ") == 2 and "tokens):" in shown
    assert "translate_zh_en.jsonl:" in shown
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["ppo-tiny-cpu", "grpo-tiny-cpu", "baichuan2-7b-ppo"])
def test_recipes_load_and_name_what_the_earlier_recipes_write(name):
    from chuan.align.rl_config import load_grpo_config, load_ppo_config
    from chuan.align.rm_config import load_rm_config
    from chuan.align.sft_config import load_sft_config

    root = Path(__file__).resolve().parents[2]
    load = load_grpo_config if name.startswith("grpo") else load_ppo_config
    cfg = load(root / "configs" / f"{name}.yaml")
    if name == "baichuan2-7b-ppo":  # the published settings
        assert (cfg.critic_warmup, cfg.clip, cfg.kl_coef, cfg.kl_coef_final) == (
            20,
            0.1,
            0.2,
            0.005,
        )
        assert (cfg.optim.lr, cfg.optim.grad_clip, cfg.stages[0].steps) == (5e-6, 0.5, 350)
        return
    assert all((root / s.path).is_file() for stage in cfg.stages for s in stage.data)
    sft = load_sft_config(root / "configs" / "sft-tiny-cpu.yaml")
    assert cfg.model == f"{sft.out}/model"
    if cfg.reward_model is not None:
        assert (
            cfg.reward_model == f"{load_rm_config(root / 'configs' / 'rm-tiny-cpu.yaml').out}/model"
        )
