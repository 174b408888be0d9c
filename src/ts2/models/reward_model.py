"""Reward models: config, loading and batched scoring for the AlpacaEval best-of-N protocol (TS², PAPER.md §4).

The paper scores every (instruction, response) pair with ``sfairXC/FsfairX-LLaMA3-RM-v0.1``, an
``AutoModelForSequenceClassification`` with one output: reward r(x, y) = w · h_t, the score head applied to the
last hidden state at one read position t. The conversation [user: x, assistant: y] is rendered with the *RM
tokenizer's* chat template.

Read-position quirk (official code): the template is applied with ``add_generation_prompt=True``, so an empty
assistant header ``<|start_header_id|>assistant<|end_header_id|>\\n\\n`` follows the response's ``<|eot_id|>``
and the score is read at the last token of that header. ``quirk=False`` reads at the last token of the
response turn instead (``add_generation_prompt=False``; for Llama-3 templates that is the ``<|eot_id|>``),
which is how the RM is meant to be used. The no-quirk token sequence is a prefix of the quirk one.

Padding: transformers 5.24's ``GenericForSequenceClassification`` reads the logit at the *rightmost token whose
id differs from* ``config.pad_token_id`` (it raises for batches > 1 when no pad id is set). We right-pad, so
real tokens never attend to padding and keep positions 0..L-1 (identical to an unpadded forward), and choose
the pad id per batch so that it never equals a row's last real token (e.g. a pad token equal to ``<|eot_id|>``
would otherwise move the read position one token left when ``quirk=False``).

User turn (``user_text``, PAPER.md §4). ``paper_detok`` (the default of ``conf/rm/fsfairx.yaml``) is what the
official ``evaluation_reward.py --detokenizer_path <policy>`` sent for every *sampled* response: the user turn is
the policy's chat-templated prompt round-tripped through the *policy* tokenizer
(``decode(encode(prompt), skip_special_tokens=True)``) with every ``"user\\n\\n"`` and ``"assistant\\n\\n"``
removed, so it starts with the leftover ``"system\\n\\nCutting Knowledge Date: ..."`` text, and the response is
round-tripped the same way. The authors' shipped reference rewards of the GPT-4 answers were scored without a
detokenizer, i.e. with the bare instruction; reference answers therefore always get the bare instruction here.
``instruction`` (the correct mode) gives the RM the AlpacaEval instruction for samples too.

Long inputs: with ``max_length`` set, a longer sequence keeps its *last* ``max_length`` tokens, so the read
position is unchanged; the count of truncated sequences is kept in ``RewardScorer.num_truncated``.

The token-level parts (rendering, padding, the forward) live in :mod:`ts2.models.scoring`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ts2.models.loading import pretrained
from ts2.models.scoring import _tensor_digest, render_ids, score_token_sequences

UserText = Literal["instruction", "paper_detok"]
USER_TEXT_MODES: tuple[str, ...] = ("instruction", "paper_detok")
PAPER_RM = "sfairXC/FsfairX-LLaMA3-RM-v0.1"

_HOW_TO_GET = (
    "Reward model {name!r} could not be loaded ({err}).\n"
    "  - The paper's RM: `huggingface-cli download " + PAPER_RM + " --local-dir /path/to/FsfairX` once with "
    "network access (about 16 GB in bf16), then set rm.name_or_path=/path/to/FsfairX (or keep the hub id and "
    "let the hub cache find it; with HF_HUB_OFFLINE=1 only the cache is searched).\n"
    "  - Any other RM must be an AutoModelForSequenceClassification with num_labels=1 and a chat template.\n"
    "  - For CPU runs use rm=tiny (trained offline by `python -m ts2.models.tiny rm`)."
)


# --------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class RMConfig:
    """One reward model and how it is applied (``conf/rm/*.yaml``).

    Exactly one of ``name_or_path`` (hub id or local folder), ``tiny`` (``TinyRMSpec`` fields: the offline tiny RM
    of :mod:`ts2.models.tiny_rm`) and ``bt`` (``FeatureRMSpec`` fields: the small scale's Bradley–Terry head on
    frozen SmolLM2 features, :mod:`ts2.models.feature_rm`) is set. ``ref_rewards`` is the reward source of the AlpacaEval reference answers:
    a file under the data directory (the shipped FsfairX scores) or ``"score"`` (score them with this RM).
    """

    id: str = "rm"
    name_or_path: str | None = None
    revision: str | None = None  # pinned hub commit of name_or_path
    tiny: Mapping[str, Any] | None = None
    bt: Mapping[str, Any] | None = (
        None  # FeatureRMSpec fields: the small scale's BT head (ts2.models.feature_rm)
    )
    quirk: bool = True
    pooling: str = (
        "last"  # last: the score at the read position; mean: averaged over tokens (bt pooling=mean)
    )
    user_text: str = "paper_detok"
    dtype: str = "bfloat16"
    batch_size: int = 8
    max_length: int | None = None
    device: str = "auto"
    ref_rewards: str = "score"

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.name_or_path, self.tiny, self.bt)) != 1:
            raise ValueError(f"rm {self.id!r}: set exactly one of name_or_path, tiny and bt.")
        if self.pooling not in ("last", "mean"):
            raise ValueError(f"rm {self.id!r}: pooling must be 'last' or 'mean', got {self.pooling!r}.")
        if self.user_text not in USER_TEXT_MODES:
            raise ValueError(
                f"rm {self.id!r}: user_text must be one of {USER_TEXT_MODES}, got {self.user_text!r}."
            )
        if self.batch_size < 1:
            raise ValueError(f"rm {self.id!r}: batch_size must be >= 1, got {self.batch_size}.")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"rm {self.id!r}: max_length must be >= 2 or null, got {self.max_length}.")
        if not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"rm {self.id!r}: dtype {self.dtype!r} is not a torch dtype name.")

    @classmethod
    def from_any(cls, cfg: RMConfig | Mapping[str, Any] | str | os.PathLike[str]) -> RMConfig:
        """From an ``RMConfig``, a mapping / OmegaConf node, or a YAML file (e.g. ``conf/rm/tiny.yaml``)."""
        if isinstance(cfg, RMConfig):
            return cfg
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, (str, os.PathLike)):
            path = Path(cfg)
            if not path.is_file():
                raise FileNotFoundError(f"RM config file {path} does not exist.")
            cfg = OmegaConf.load(path)
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        if not isinstance(cfg, Mapping):
            raise TypeError(f"RM config must be a mapping or a YAML path, got {type(cfg).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"Unknown RM config key(s) {unknown}; known: {sorted(known)}.")
        return cls(**dict(cfg))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- rendering
# transformers 4.x ``clean_up_tokenization``: applied by ``decode`` when the tokenizer config says
# ``clean_up_tokenization_spaces: true`` (Llama-3/3.1 tokenizers do). transformers 5 skips it for BPE tokenizers,
# so the official (2024, transformers 4.4x) strings need it written out.
_CLEANUP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def clean_up_tokenization(text: str) -> str:
    """transformers 4.x's ``clean_up_tokenization``: drop the space before . ? ! , and English contractions."""
    for old, new in _CLEANUP:
        text = text.replace(old, new)
    return text


def detokenise(tokenizer: Any, text: str, cleanup: bool | None = None) -> str:
    """``tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True)`` as the official scripts ran it.

    It drops every special token (``<|begin_of_text|>``, ``<|start_header_id|>``, ``<|eot_id|>``, ...). With
    ``cleanup`` (default: the tokenizer's ``clean_up_tokenization_spaces`` setting, true for Llama-3.1) the
    transformers-4.x space clean-up follows (:func:`clean_up_tokenization`), as it did in the authors' runs:
    ``"Hello , world"`` comes back as ``"Hello, world"``. (transformers 5 no longer applies it to BPE
    tokenizers, so it is applied here explicitly.)
    """
    out = tokenizer.decode(
        tokenizer.encode(text), skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    if cleanup is None:
        cleanup = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
    return clean_up_tokenization(out) if cleanup else out


def paper_detok_user_text(templated_prompt: str, detokenizer: Any) -> str:
    """The user text the official scripts built from a sample's chat-templated prompt (RM and diversity).

    ``detokenise(detokenizer, prompt)`` with every user and assistant turn header removed (Python's
    ``str.replace``: every occurrence, also inside the instruction). ``detokenizer`` is the *policy's* tokenizer
    (``--detokenizer_path``); the headers are its own template's (:func:`ts2.models.chat.role_header`): the
    official scripts' literal ``"user\\n\\n"`` and ``"assistant\\n\\n"`` for Llama-3.1's template, ``"user\\n"`` and
    ``"assistant\\n"`` for ChatML (SmolLM2, Qwen2). With a Llama-3.1-style template the result starts with the
    leftover ``"system\\n\\nCutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n"``; with
    SmolLM2's, with ``"system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face\\n"``. (The
    official literal strings would remove nothing from a ChatML prompt; their intent, dropping the turn headers,
    is what is kept.)
    """
    from ts2.models.chat import role_header

    if detokenizer is None:
        raise ValueError(
            "paper_detok_user_text needs the policy model's tokenizer (the official --detokenizer_path): the "
            "special tokens and decode rules are the tokenizer's own."
        )
    text = detokenise(detokenizer, templated_prompt)
    for role in ("user", "assistant"):
        text = text.replace(role_header(detokenizer, role), "")
    return text


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256[:16] of what decides a tokenizer's encode/decode and chat template (fingerprints of texts built with it)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    h.update(
        json.dumps(
            [
                len(tokenizer),
                getattr(tokenizer, "clean_up_tokenization_spaces", None),
                sorted(map(str, getattr(tokenizer, "all_special_tokens", []))),
            ]
        ).encode()
    )
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------- scorer
class RewardScorer:
    """Batched reward scoring r(instruction, response) with one RM and one rendering convention.

    ``fingerprint`` identifies everything that determines the scores (weights sample, config, chat template,
    quirk, user-text mode, dtype, truncation); reward caches are keyed by it.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        quirk: bool = True,
        user_text: str = "paper_detok",
        batch_size: int = 8,
        max_length: int | None = None,
        name: str = "rm",
        progress: bool = True,
        detokenizer: Any = None,
        pooling: str = "last",
    ) -> None:
        if int(model.config.num_labels) != 1:
            raise ValueError(
                f"Reward model {name!r} has num_labels={model.config.num_labels}; a scalar RM needs num_labels=1."
            )
        if user_text not in USER_TEXT_MODES:
            raise ValueError(f"user_text must be one of {USER_TEXT_MODES}, got {user_text!r}.")
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"Tokenizer of reward model {name!r} has no chat template.")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.quirk = bool(quirk)
        self.user_text = user_text
        self.batch_size = int(batch_size)
        self.max_length = max_length
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}.")
        self.pooling = pooling
        self.name = name
        self.progress = progress
        self.num_truncated = 0
        self.path: str | None = None  # the loaded folder (from_config)
        self.rm_eval: dict[str, Any] | None = None  # its rm_eval.json (held-out pairwise accuracy), if any
        self._fingerprint: str | None = None
        self.detokenizer = None
        if detokenizer is not None:
            self.use_detokenizer(detokenizer)

    def use_detokenizer(self, tokenizer: Any) -> RewardScorer:
        """Set the policy tokenizer that ``user_text='paper_detok'`` rebuilds sample texts with (returns self)."""
        self.detokenizer = tokenizer
        self._fingerprint = None  # the detokenizer decides the texts, so it is part of the fingerprint
        return self

    # ---- construction
    @classmethod
    def from_config(
        cls, cfg: RMConfig | Mapping[str, Any] | str | os.PathLike[str], **kw: Any
    ) -> RewardScorer:
        """Load the RM of ``conf/rm/*.yaml`` (building the tiny RM on first use); ``detokenizer=`` as the class."""
        cfg = RMConfig.from_any(cfg)
        path = resolve_rm_path(cfg)
        model, tok = load_reward_model(path, dtype=cfg.dtype, device=cfg.device, revision=cfg.revision)
        _check_tiny_build(path, cfg)
        scorer = cls(
            model,
            tok,
            quirk=cfg.quirk,
            user_text=cfg.user_text,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            name=cfg.id,
            pooling=cfg.pooling,
            **kw,
        )
        scorer.path = path
        # The judge's own held-out quality (the tiny and BT RMs write it at build time), for the report's header.
        ev = Path(path) / "rm_eval.json"
        scorer.rm_eval = json.loads(ev.read_text()) if ev.is_file() else None
        return scorer

    # ---- identity
    @property
    def fingerprint(self) -> str:
        """``<id>-<sha256[:12]>`` of what determines the scores."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            cfg = self.model.config.to_dict()
            for k in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "pad_token_id"):
                cfg.pop(k, None)
            h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
            h.update(str(self.tokenizer.chat_template).encode())
            h.update(json.dumps([len(self.tokenizer), self.tokenizer.bos_token]).encode())
            params = list(self.model.named_parameters())
            for _, p in (params[0], params[-1]):
                _tensor_digest(h, p)
            dtype = str(params[0][1].dtype)
            h.update(json.dumps([self.quirk, self.user_text, self.max_length, dtype]).encode())
            if (
                self.pooling != "last"
            ):  # (the last-token fingerprints of existing reward caches stay as they were)
                h.update(f"pooling={self.pooling}".encode())
            if self.user_text == "paper_detok" and self.detokenizer is not None:
                h.update(tokenizer_digest(self.detokenizer).encode())
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)
            self._fingerprint = f"{safe}-{h.hexdigest()[:12]}"
        return self._fingerprint

    # ---- scoring
    def texts(self, instruction: str, response: str, templated_prompt: str | None = None) -> tuple[str, str]:
        """The (user turn, response) shown to the RM (see ``user_text`` in the module doc).

        With ``paper_detok``, a sample (``templated_prompt`` given) gets :func:`paper_detok_user_text` of its
        prompt and its response round-tripped through the policy tokenizer (:func:`detokenise`), as the official
        run did; items without a templated prompt (the GPT-4 reference answers) get the bare instruction and the
        response as it is, as the authors' reference rewards were made.
        """
        if self.user_text == "instruction" or templated_prompt is None:
            return instruction, response
        if self.detokenizer is None:
            raise ValueError(
                f"RM {self.name!r}: user_text='paper_detok' rebuilds each sample's user turn with the policy "
                "model's tokenizer (official --detokenizer_path); none was given. Pass detokenizer= (ts2.evaluate "
                "reads it from the samples' meta.json or policy_tokenizer=), or use rm.user_text=instruction."
            )
        return paper_detok_user_text(templated_prompt, self.detokenizer), detokenise(
            self.detokenizer, response
        )

    def user_content(self, instruction: str, templated_prompt: str | None = None) -> str:
        """The user turn shown to the RM (:meth:`texts`)."""
        return self.texts(instruction, "", templated_prompt)[0]

    def encode(self, instruction: str, response: str, templated_prompt: str | None = None) -> list[int]:
        """The exact token ids the RM reads; the score is taken at the last one."""
        ids = render_ids(
            self.tokenizer, *self.texts(instruction, response, templated_prompt), quirk=self.quirk
        )
        if self.max_length is not None and len(ids) > self.max_length:
            ids = ids[-self.max_length :]
        return ids

    def score(
        self,
        instructions: Sequence[str],
        responses: Sequence[str],
        templated_prompts: Sequence[str] | None = None,
        *,
        desc: str = "RM scoring",
    ) -> np.ndarray:
        """Rewards of (instruction, response) pairs, float64, in input order."""
        if len(instructions) != len(responses):
            raise ValueError(f"{len(instructions)} instructions but {len(responses)} responses.")
        if templated_prompts is not None and len(templated_prompts) != len(responses):
            raise ValueError(f"{len(templated_prompts)} templated prompts but {len(responses)} responses.")
        seqs = []
        for i, (x, y) in enumerate(zip(instructions, responses, strict=True)):
            user, response = self.texts(x, y, None if templated_prompts is None else templated_prompts[i])
            full = render_ids(self.tokenizer, user, response, quirk=self.quirk)
            if self.max_length is not None and len(full) > self.max_length:
                self.num_truncated += 1
                full = full[-self.max_length :]
            seqs.append(full)
        return score_token_sequences(
            self.model,
            seqs,
            batch_size=self.batch_size,
            desc=desc,
            progress=self.progress,
            pooling=self.pooling,
        )


# -------------------------------------------------------------------------------------------------- loading
def resolve_rm_path(cfg: RMConfig) -> str:
    """Local folder or hub id of the RM; builds the tiny or BT RM on first use (as ``resolve_model_path`` for LMs)."""
    if cfg.bt is not None:
        from ts2.models.feature_rm import FeatureRMSpec, build_feature_rm

        return str(build_feature_rm(FeatureRMSpec.from_dict(cfg.bt), progress=True))  # minutes: show them
    if cfg.tiny is not None:
        from ts2.models.tiny_rm import TinyRMSpec, build_tiny_rm

        return str(build_tiny_rm(TinyRMSpec.from_dict(cfg.tiny)))
    return str(cfg.name_or_path)


def load_reward_model(
    name_or_path: str, *, dtype: str = "bfloat16", device: str = "auto", revision: str | None = None
) -> tuple[Any, Any]:
    """``AutoModelForSequenceClassification`` (num_labels=1) + tokenizer, with a clear error if unavailable.

    Loaded as the LMs are (:func:`ts2.models.loading.pretrained`): a missing local folder or an unreachable hub
    id says how to obtain the paper's RM.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype {dtype!r} is not a torch dtype name.")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tok = pretrained(
        name_or_path, lambda: AutoTokenizer.from_pretrained(name_or_path, revision=revision), _HOW_TO_GET
    )
    model = pretrained(
        name_or_path,
        lambda: AutoModelForSequenceClassification.from_pretrained(
            name_or_path, dtype=torch_dtype, revision=revision
        ),
        _HOW_TO_GET,
    )
    if int(model.config.num_labels) != 1:
        raise ValueError(
            f"{name_or_path!r} has num_labels={model.config.num_labels}; a scalar reward model needs num_labels=1."
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    text_cfg = model.config.get_text_config()
    if text_cfg.pad_token_id is None:
        # Needed for batches > 1; the actual pad id is chosen per batch by score_token_sequences.
        text_cfg.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return model, tok


def _check_tiny_build(path: str, cfg: RMConfig) -> None:
    """Warn when a built RM (tiny, BT) is applied with another read convention or length than it was trained with;
    a BT head fitted on mean-pooled features read at one token (or the other way round) is an error."""
    build = Path(path) / "rm_build.json"
    if not build.is_file():
        return
    spec = json.loads(build.read_text()).get("spec", {})
    if spec.get("pooling", "last") != cfg.pooling:
        raise ValueError(
            f"RM {path} was fitted with pooling={spec.get('pooling', 'last')!r} but rm.pooling={cfg.pooling!r}: "
            "set rm.pooling to the spec's (conf/rm/smollm2_bt.yaml interpolates it from rm.bt.pooling)."
        )
    for key, used in (("quirk", cfg.quirk), ("max_length", cfg.max_length)):
        if key in spec and spec[key] != used:
            warnings.warn(
                f"RM {path} was trained with {key}={spec[key]!r} but is applied with {key}={used!r}.",
                stacklevel=3,
            )
