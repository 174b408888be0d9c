"""Chat templates: the tiny models' own, and what any model's template writes around a turn.

The tiny models (the random-init test model and the pretrained base) use Llama-3.1-Instruct's shape, shortened
(PAPER.md §3: the paper trains with that template). Other models bring their own (SmolLM2: ChatML with a
default system line). The paper's scripts strip Llama-3.1's turn headers and end-of-turn token by their literal
text (``"user\\n\\n"``, ``"<|eot_id|>"``); :func:`role_header` and :func:`end_of_turn_token` read the same
pieces off any model's template, so those steps use the sampled model's own template.
"""

from __future__ import annotations

from typing import Any

_MARK = "\u2063ts2-template-probe\u2063"  # text no template adds or alters

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|pad|>",
]

# Llama-3.1-Instruct's shape, shortened: the system block (with its "Cutting Knowledge Date") is always
# emitted, each turn is "<|start_header_id|>role<|end_header_id|>\n\n" + content + "<|eot_id|>".
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def _render_with_marker(tokenizer: Any, role: str) -> str:
    """The template's text for [user: "hi", assistant: marker] (``role="assistant"``) or [user: marker]."""
    chat = [{"role": "user", "content": _MARK if role == "user" else "hi"}]
    if role != "user":
        chat.append({"role": role, "content": _MARK})
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    if _MARK not in text:
        raise ValueError(f"The chat template does not write a {role} turn's content verbatim.")
    return text


def role_header(tokenizer: Any, role: str) -> str:
    """What the template writes from the role's name to the turn's content, special tokens dropped.

    As the paper's scripts see it after ``decode(encode(text), skip_special_tokens=True)``: Llama-3.1's
    ``<|start_header_id|>user<|end_header_id|>\\n\\n`` leaves ``"user\\n\\n"``; ChatML's ``<|im_start|>user\\n``
    leaves ``"user\\n"``.
    """
    before = _render_with_marker(tokenizer, role).split(_MARK, 1)[0]
    at = before.rfind(role)
    if at < 0:
        raise ValueError(f"The chat template does not name the {role!r} role before its content.")
    ids = tokenizer(before[at:], add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def end_of_turn_token(tokenizer: Any) -> str | None:
    """The special token the template writes right after an assistant message (Llama-3.1 ``<|eot_id|>``,
    ChatML ``<|im_end|>``), or None when the content is not followed by a special token."""
    after = _render_with_marker(tokenizer, "assistant").split(_MARK, 1)[1]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    if not ids:
        return None
    added = getattr(tokenizer, "added_tokens_decoder", {}).get(ids[0])
    special = ids[0] in tokenizer.all_special_ids or (added is not None and added.special)
    return tokenizer.convert_ids_to_tokens(ids[0]) if special else None
