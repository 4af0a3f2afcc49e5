"""Chat with a Baichuan 2-format model: the prompt as Baichuan builds it, and the reply.

`build_chat_input` follows Baichuan 2's `generation_utils.build_chat_input` (Hugging Face repos
`baichuan-inc/Baichuan2-{7B,13B}-Chat`), the one `model.chat` uses, not the legacy
`_build_chat_input` of `modeling_baichuan.py`, which differs in EOS and token budget:

- an optional system message (first only) is plain text with no marker;
- every other message is its role id (user 195, assistant 196, inserted as ids, never as
  text, which tokenizes differently: hiyouga/LLaMA-Factory#177) followed by its content, with
  no EOS after past answers;
- rounds (a user message and what follows it) are kept newest first while they fit in
  `model_max_length - max_new_tokens - len(system)`; the newest round is always kept;
- the assistant id is appended unless the last message is the assistant's, and the result
  is cut from the left to `model_max_length - max_new_tokens` (which can cut the system).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from chuan.errors import InputError
from chuan.infer.generate import stream_tokens
from chuan.infer.sampling import SamplingConfig, describe, eos_stop_ids, generation_defaults
from chuan.infer.text import TextStream
from chuan.model.modeling import BaichuanForCausalLM
from chuan.tokenizer.chat_templates import ChatTemplate, split_messages, template_for

log = logging.getLogger(__name__)


def split_rounds(messages: Sequence[dict]) -> tuple[str, list[list[dict]]]:
    """The system text ("" when none) and the rounds, each starting at a user message."""
    system, turns = split_messages(messages)
    rounds: list[list[dict]] = []
    for role, content in turns:
        if role == "user" or not rounds:
            rounds.append([])
        rounds[-1].append({"role": role, "content": content})
    return system, rounds


def build_chat_input(
    tokenizer,
    messages: Sequence[dict],
    max_new_tokens: int,
    model_max_length: int,
    *,
    template: ChatTemplate | None = None,
) -> list[int]:
    """The prompt ids for `messages` (`[{"role", "content"}]`) in `template` (default: the
    one recorded in the tokenizer's dir, else Baichuan 2's), fitted to the context as
    Baichuan 2's `build_chat_input` does (see the module docstring)."""
    template = template or template_for(tokenizer)
    max_input_tokens = model_max_length - max_new_tokens
    if max_input_tokens < 1:
        raise InputError(
            f"max_new_tokens={max_new_tokens} leaves no room for the prompt in "
            f"model_max_length={model_max_length}"
        )
    system, rounds = split_rounds(messages)
    head = [{"role": "system", "content": system}] if system else []
    # The assistant's header is not history: Baichuan 2 budgets system + rounds only.
    with_header = len(template.prompt_ids(messages, add_generation_prompt=True))
    header = max(0, with_header - len(template.prompt_ids(messages, add_generation_prompt=False)))

    def prompt(first_round: int) -> list[int]:
        kept = [m for r in rounds[first_round:] for m in r]
        return template.prompt_ids(head + kept, add_generation_prompt=True)

    first = len(rounds) - 1  # the newest round is always kept
    ids = prompt(first)
    while first > 0 and len(ids) - header < max_input_tokens:
        longer = prompt(first - 1)
        if len(longer) - header > max_input_tokens:
            break
        first, ids = first - 1, longer
    if first:
        log.info("%d earlier round(s) left out to fit the context", first)
    if len(ids) > max_input_tokens:
        log.warning(
            "the prompt is %d tokens but only %d fit beside %d new tokens: its first %d tokens "
            "are dropped (as Baichuan 2 does); shorten the message or --max-new-tokens",
            len(ids),
            max_input_tokens,
            max_new_tokens,
            len(ids) - max_input_tokens,
        )
    return ids[-max_input_tokens:]


def default_config(model, tokenizer) -> SamplingConfig:
    """`generation_defaults` of the dir the model or its tokenizer came from (Baichuan 2's
    chat defaults when neither remembers one)."""
    for source in (model, tokenizer):
        name = getattr(source, "name_or_path", "")
        if name and Path(name).is_dir():
            return generation_defaults(name)
    return generation_defaults(None)


def _fitted(model, cfg: SamplingConfig) -> SamplingConfig:
    """`cfg` made to fit the model: stopping at the model's EOS when it names no stop ids
    (as `model.generate` does), and with at most half the context for the reply, so that
    Baichuan 2's 2048-token default leaves room for the prompt in a small model too."""
    stops = cfg.stop_token_ids or eos_stop_ids(model.config)
    room = max(1, model.config.model_max_length // 2)
    if cfg.max_new_tokens > room:
        log.warning(
            "max_new_tokens=%d cut to %d, half the model's context", cfg.max_new_tokens, room
        )
    return dataclasses.replace(
        cfg, stop_token_ids=stops, max_new_tokens=min(cfg.max_new_tokens, room)
    )


def fits_context(model, tokenizer, cfg: SamplingConfig | None = None):
    """A check that messages fit whole in the model's context beside the reply budget that
    `stream_chat` gives `cfg`, so that a caller adding text to a prompt (retrieved sources)
    can shorten it before `build_chat_input` would cut its start."""
    cfg = _fitted(model, cfg or default_config(model, tokenizer))
    room = model.config.model_max_length - cfg.max_new_tokens
    template = template_for(tokenizer)

    def fits(messages: Sequence[dict]) -> bool:
        return len(template.prompt_ids(messages, add_generation_prompt=True)) <= room

    return fits


def stream_chat(
    model, tokenizer, messages: Sequence[dict], cfg: SamplingConfig | None = None
) -> Iterator[str]:
    """The reply to `messages` as text pieces, yielded as they are decoded.

    Without `cfg`, the model dir's generation defaults are used (sampling is then on, as in
    Baichuan's releases; the settings are logged). The reply gets at most half the model's
    context (Baichuan 2: 2048 of 4096, its default).
    """
    if cfg is None:
        cfg = default_config(model, tokenizer)
    else:
        log.info("generation settings: %s", describe(cfg))
    cfg = _fitted(model, cfg)
    prompt = build_chat_input(
        tokenizer, messages, cfg.max_new_tokens, model.config.model_max_length
    )
    stream = TextStream(tokenizer)
    for token in stream_tokens(model, prompt, cfg):
        piece = stream.push(token)
        if piece:
            yield piece
    rest = stream.flush()
    if rest:
        yield rest


def chat(model, tokenizer, messages: Sequence[dict], cfg: SamplingConfig | None = None) -> str:
    """The reply to `messages` (see `stream_chat`)."""
    return "".join(stream_chat(model, tokenizer, messages, cfg))


# Baichuan's published usage is `model.chat(tokenizer, messages)`. The model class gets the two
# methods from this room, which generates, so that `model` never imports `infer`; importing
# chuan (any part of it) imports this module.
BaichuanForCausalLM.chat = chat
BaichuanForCausalLM.stream_chat = stream_chat
