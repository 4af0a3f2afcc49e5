"""Chat templates: one object per format, used to train (SFT, DPO, PPO) and to prompt (chat,
serve, eval `--chat`), and written into the tokenizer dir as a Jinja `chat_template`.

A template renders a conversation into pieces of text, each marked trained or not. Encoding
tokenizes the rendered text in one call, as `apply_chat_template` does, and a token is trained
when it overlaps a trained piece — transformers' rule for `return_assistant_tokens_mask` over
`{% generation %}` blocks — so chuan's ids and loss mask are the ones the Jinja template gives.
Role markers are special pieces, which the tokenizer always splits out: Baichuan 2's ids 195 /
196 are therefore exactly `[195] + encode(user) + [196] + encode(answer)`, the id concatenation
of baichuan-inc/Baichuan2 `fine-tune/fine-tune.py`, and never a marker tokenized as text
(hiyouga/LLaMA-Factory#177).

The formats:

- `baichuan2` (default): optional system text with no marker, then per turn `<reserved_106>`
  (id 195) + question, `<reserved_107>` (196) + answer; no EOS between turns; EOS after the
  last answer. The loss covers each answer and, at every later 195, the label EOS (the
  previous answer's last token learns to predict `</s>`), then the final EOS — Baichuan 2's
  `fine-tune.py` labels and LLaMA-Factory's `efficient_eos`.
- `chatml`: `<|im_start|>role\\n content <|im_end|>\\n`; trains each answer and its
  `<|im_end|>`. A vocabulary without the two markers (chuan's and Baichuan's) uses its
  reserved pieces `<reserved_108>` / `<reserved_109>` in their place, so no embedding row
  is added.
- `llama2`: Meta's `<s>[INST] <<SYS>>\\n system \\n<</SYS>>\\n\\n question [/INST] answer </s>`
  (facebookresearch/llama `generation.py`); trains each answer and its `</s>`.
- `plain`: no markers — system, then `question\\n answer</s>` per turn (for base-model style
  tasks); trains each answer and its `</s>`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chuan.errors import InputError
from chuan.fileio import write_atomic
from chuan.model.loss import IGNORE_INDEX

TEMPLATE_NAMES = ("baichuan2", "chatml", "llama2", "plain")
DEFAULT_TEMPLATE = "baichuan2"
# The tokenizer_config.json key that names the template a dir was trained with; its
# `chat_template` holds the Jinja text (one version of the pair, written together).
CONFIG_KEY = "chuan_chat_template"
# Baichuan's chat role ids, and their pieces in Baichuan 2's (and chuan's) vocabulary;
# Baichuan 1 names the same ids `<reserved_102>` / `<reserved_103>`.
USER_TOKEN_ID, ASSISTANT_TOKEN_ID = 195, 196
BAICHUAN_USER = "<reserved_106>"
BAICHUAN_ASSISTANT = "<reserved_107>"
CHATML_MARKERS = ("<|im_start|>", "<|im_end|>")
CHATML_RESERVED = ("<reserved_108>", "<reserved_109>")

ROLES = ("system", "user", "assistant")
Turn = tuple[str, str]  # (role, content), role "user" or "assistant"


@dataclass(frozen=True)
class Piece:
    text: str
    trained: bool = False


@dataclass(frozen=True)
class Encoded:
    """One conversation as the model sees it: ids and their labels (-100 = no loss)."""

    input_ids: list[int]
    labels: list[int]


def split_messages(messages: Sequence[dict]) -> tuple[str, list[Turn]]:
    """OpenAI-style `[{"role", "content"}]` as (system text, turns), checked."""
    if not messages:
        raise InputError("no messages given")
    turns: list[Turn] = []
    system = ""
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InputError(f"message {index}: role must be one of {ROLES}, got {role!r}")
        if not isinstance(content, str):
            raise InputError(f"message {index}: content must be a string")
        if role == "system":
            if index != 0:
                raise InputError(f"message {index}: a system message may only come first")
            system = content
        else:
            turns.append((role, content))
    return system, turns


def _raise(message: str) -> str:
    return "{{ raise_exception('" + message + "') }}"


_SYSTEM_FIRST = (
    "{% if message['role'] == 'system' and not loop.first %}"
    + _raise("a system message may only come first")
    + "{% endif %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    + _raise("chat roles are system, user and assistant")
    + "{% endif %}"
)


def baichuan2_jinja(user: str = BAICHUAN_USER, assistant: str = BAICHUAN_ASSISTANT) -> str:
    """Baichuan 2's format as Jinja, for a vocabulary whose role pieces are `user` and
    `assistant` (also what a base model's tokenizer dir carries)."""
    return (
        "{% for message in messages %}" + _SYSTEM_FIRST + "{% if message['role'] == 'system' %}"
        "{{ message['content'] }}"
        "{% elif message['role'] == 'user' %}"
        "{% if loop.first or loop.previtem['role'] != 'assistant' %}"
        f"{user}"
        "{% endif %}"
        "{{ message['content'] }}"
        "{% else %}"
        f"{assistant}"
        "{% generation %}{{ message['content'] }}"
        f"{{% if not loop.last %}}{user}"
        "{% elif not add_generation_prompt %}{{ eos_token }}{% endif %}"
        "{% endgeneration %}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
        f"{assistant}"
        "{% endif %}"
    )


class ChatTemplate:
    """A chat format bound to one tokenizer (its EOS and marker strings)."""

    name = ""
    stop_markers: tuple[str, ...] = ()  # besides EOS: tokens that end a reply

    def __init__(self, tokenizer):
        if tokenizer.eos_token is None:
            raise InputError("the tokenizer has no EOS token; a chat template needs one")
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token
        self.label_map: dict[int, int] = {}  # trained token id -> its label, where they differ

    # -- what a subclass defines -------------------------------------------------------------

    def render(
        self, system: str, turns: Sequence[Turn], *, add_generation_prompt: bool, train: str
    ) -> list[Piece]:
        """The pieces of a conversation; `train` is "all" (every answer), "last" (only the
        last answer) or "none"."""
        raise NotImplementedError

    def jinja(self) -> str:
        """The same format as a transformers `chat_template`, answers in generation blocks."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id and token != "<unk>":
            raise InputError(
                f"chat template {self.name!r} needs the token {token!r}, which this tokenizer "
                "does not have; choose another template"
            )
        return token_id

    @property
    def stop_ids(self) -> list[int]:
        """The ids that end a reply: EOS and the format's end marker."""
        ids = [self.tokenizer.eos_token_id]
        ids += [self._token_id(m) for m in self.stop_markers if m != self.eos]
        return ids

    def text(self, messages: Sequence[dict], *, add_generation_prompt: bool = True) -> str:
        system, turns = split_messages(messages)
        pieces = self.render(
            system, turns, add_generation_prompt=add_generation_prompt, train="none"
        )
        return "".join(p.text for p in pieces)

    def prompt_ids(
        self, messages: Sequence[dict], *, add_generation_prompt: bool = True
    ) -> list[int]:
        """Ids of `messages` for generation (the assistant's header appended)."""
        text = self.text(messages, add_generation_prompt=add_generation_prompt)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(
        self,
        conversations: Sequence[tuple[str, Sequence[Turn]]],
        *,
        mask_history: bool = False,
    ) -> list[Encoded]:
        """Training ids and labels of (system, turns) conversations, tokenized in one batch."""
        rendered = [
            self.render(
                system,
                turns,
                add_generation_prompt=False,
                train="last" if mask_history else "all",
            )
            for system, turns in conversations
        ]
        texts = ["".join(p.text for p in pieces) for pieces in rendered]
        batch = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for pieces, ids, offsets in zip(
            rendered, batch["input_ids"], batch["offset_mapping"], strict=True
        ):
            spans, start = [], 0
            for piece in pieces:
                end = start + len(piece.text)
                if piece.trained and end > start:
                    spans.append((start, end))
                start = end
            labels = []
            for token_id, trained in zip(ids, _overlaps(offsets, spans), strict=True):
                labels.append(self.label_map.get(token_id, token_id) if trained else IGNORE_INDEX)
            out.append(Encoded(list(ids), labels))
        return out


def _overlaps(offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """Per token: does it overlap a trained span? (transformers' assistant-mask rule)."""
    marks, index = [], 0
    for token_start, token_end in offsets:
        while index < len(spans) and token_start >= spans[index][1]:
            index += 1
        marks.append(index < len(spans) and token_end > spans[index][0])
    return marks


def _trained_turns(turns: Sequence[Turn], train: str) -> list[bool]:
    """Per turn: is it an answer the loss covers?"""
    last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=-1)
    return [
        role == "assistant" and (train == "all" or (train == "last" and i == last))
        for i, (role, _) in enumerate(turns)
    ]


class Baichuan2Template(ChatTemplate):
    name = "baichuan2"

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.user, self.assistant = (
            _role_piece(tokenizer, i) for i in (USER_TOKEN_ID, ASSISTANT_TOKEN_ID)
        )
        # The user marker after an answer carries the label EOS (Baichuan 2 `fine-tune.py`).
        self.label_map = {USER_TOKEN_ID: tokenizer.eos_token_id}

    def render(self, system, turns, *, add_generation_prompt, train):
        trained = _trained_turns(turns, train)
        pieces = [Piece(system)] if system else []
        for i, (role, content) in enumerate(turns):
            if role == "user":
                if i == 0 or turns[i - 1][0] != "assistant":
                    pieces.append(Piece(self.user))
                pieces.append(Piece(content))
                continue
            pieces += [Piece(self.assistant), Piece(content, trained[i])]
            if i + 1 < len(turns):
                pieces.append(Piece(self.user, trained[i]))
            elif not add_generation_prompt:
                pieces.append(Piece(self.eos, trained[i]))
        if add_generation_prompt and (not turns or turns[-1][0] != "assistant"):
            pieces.append(Piece(self.assistant))
        return pieces

    def jinja(self) -> str:
        return baichuan2_jinja(self.user, self.assistant)


def _role_piece(tokenizer, token_id: int) -> str:
    """The piece of a Baichuan role id, refusing a vocabulary where it is no reserved piece
    (e.g. LLaMA's, where 195 is a byte): the prompt would silently be garbage."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if not (isinstance(piece, str) and piece.startswith("<reserved_")):
        raise InputError(
            f"the tokenizer's id {token_id} is {piece!r}, not a <reserved_N> piece: it has "
            "no Baichuan chat role tokens (train it with `chuan tokenizer train`, or choose "
            "another chat template)"
        )
    return piece


class ChatMLTemplate(ChatTemplate):
    name = "chatml"

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        vocab = tokenizer.get_vocab()
        markers = CHATML_MARKERS if all(m in vocab for m in CHATML_MARKERS) else CHATML_RESERVED
        for marker in markers:
            self._token_id(marker)
        self.start, self.end = markers
        self.stop_markers = (self.end,)

    def render(self, system, turns, *, add_generation_prompt, train):
        trained = _trained_turns(turns, train)
        pieces = [Piece(f"{self.start}system\n{system}{self.end}\n")] if system else []
        for i, (role, content) in enumerate(turns):
            pieces.append(Piece(f"{self.start}{role}\n"))
            pieces += [Piece(content + self.end, trained[i]), Piece("\n")]
        if add_generation_prompt:
            pieces.append(Piece(f"{self.start}assistant\n"))
        return pieces

    def jinja(self) -> str:
        s, e = self.start, self.end
        return (
            "{% for message in messages %}" + _SYSTEM_FIRST + f"{s}{{{{ message['role'] }}}}\n"
            "{% if message['role'] == 'assistant' %}"
            f"{{% generation %}}{{{{ message['content'] }}}}{e}{{% endgeneration %}}"
            f"{{% else %}}{{{{ message['content'] }}}}{e}{{% endif %}}"
            # transformers' Jinja trims the newline after a block tag: write it as a string
            "{{ '\\n' }}"
            "{% endfor %}"
            f"{{% if add_generation_prompt %}}{s}assistant\n{{% endif %}}"
        )


class Llama2Template(ChatTemplate):
    name = "llama2"

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        if tokenizer.bos_token is None:
            raise InputError("chat template 'llama2' needs a BOS token; this tokenizer has none")
        self.bos = tokenizer.bos_token

    def render(self, system, turns, *, add_generation_prompt, train):
        trained = _trained_turns(turns, train)
        pieces = []
        for i, (role, content) in enumerate(turns):
            if role == "user":
                head = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system and i == 0 else ""
                pieces.append(Piece(f"{self.bos}[INST] {head}{content} [/INST]"))
            else:
                pieces += [Piece(" "), Piece(f"{content} {self.eos}", trained[i])]
        return pieces

    def jinja(self) -> str:
        return (
            "{% for message in messages %}" + _SYSTEM_FIRST + "{% if message['role'] == 'user' %}"
            "{{ bos_token }}[INST] "
            "{% if loop.index0 == 1 and messages[0]['role'] == 'system' %}"
            "<<SYS>>\n{{ messages[0]['content'] }}\n<</SYS>>\n\n"
            "{% endif %}"
            "{{ message['content'] }} [/INST]"
            "{% elif message['role'] == 'assistant' %}"
            " {% generation %}{{ message['content'] }} {{ eos_token }}{% endgeneration %}"
            "{% endif %}"
            "{% endfor %}"
        )


class PlainTemplate(ChatTemplate):
    name = "plain"

    def render(self, system, turns, *, add_generation_prompt, train):
        trained = _trained_turns(turns, train)
        pieces = [Piece(system + "\n")] if system else []
        for i, (role, content) in enumerate(turns):
            if role == "user":
                pieces.append(Piece(content + "\n"))
            else:
                pieces.append(Piece(content + self.eos, trained[i]))
        return pieces

    def jinja(self) -> str:
        return (
            "{% for message in messages %}"
            + _SYSTEM_FIRST
            + "{% if message['role'] == 'assistant' %}"
            "{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
            "{% else %}{{ message['content'] }}\n{% endif %}"
            "{% endfor %}"
        )


_TEMPLATES = {
    cls.name: cls for cls in (Baichuan2Template, ChatMLTemplate, Llama2Template, PlainTemplate)
}


def get_template(name: str, tokenizer) -> ChatTemplate:
    """The template `name` bound to `tokenizer`; a clear error for an unknown name or a
    vocabulary that lacks the template's markers."""
    if name not in _TEMPLATES:
        raise InputError(
            f"unknown chat template {name!r}; choose one of {', '.join(TEMPLATE_NAMES)}"
        )
    return _TEMPLATES[name](tokenizer)


def template_name(tokenizer_dir: str | Path) -> str | None:
    """The template a tokenizer (or model) dir was fine-tuned with, if one was recorded."""
    path = Path(tokenizer_dir) / "tokenizer_config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get(CONFIG_KEY)


def template_for(tokenizer) -> ChatTemplate:
    """The template recorded in the dir the tokenizer was loaded from, else Baichuan 2's
    (every chuan base model's format)."""
    source = getattr(tokenizer, "name_or_path", "")
    name = template_name(source) if source and Path(source).is_dir() else None
    return get_template(name or DEFAULT_TEMPLATE, tokenizer)


def record_template(tokenizer_dir: str | Path, template: ChatTemplate) -> None:
    """Write the template's name and Jinja text into a dir's `tokenizer_config.json`."""
    path = Path(tokenizer_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config[CONFIG_KEY] = template.name
    config["chat_template"] = template.jinja()
    write_atomic(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
