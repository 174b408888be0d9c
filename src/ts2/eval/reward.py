"""Reward-model scoring for the AlpacaEval best-of-N protocol (TS², PAPER.md §4).

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

Long inputs: with ``max_length`` set, a longer sequence keeps its *last* ``max_length`` tokens, so the read
position is unchanged; the count of truncated sequences is kept in ``RewardScorer.num_truncated``.
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

UserText = Literal["instruction", "paper_detok"]
USER_TEXT_MODES: tuple[str, ...] = ("instruction", "paper_detok")
PAPER_RM = "sfairXC/FsfairX-LLaMA3-RM-v0.1"

_HOW_TO_GET = (
    "Reward model {name!r} could not be loaded ({err}).\n"
    "  - The paper's RM: `huggingface-cli download " + PAPER_RM + " --local-dir /path/to/FsfairX` once with "
    "network access (about 16 GB in bf16), then set rm.name_or_path=/path/to/FsfairX (or keep the hub id and "
    "let the hub cache find it; with HF_HUB_OFFLINE=1 only the cache is searched).\n"
    "  - Any other RM must be an AutoModelForSequenceClassification with num_labels=1 and a chat template.\n"
    "  - For CPU runs use rm=tiny (trained offline by `python -m ts2.models.tiny_rm`)."
)


# --------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class RMConfig:
    """One reward model and how it is applied (``conf/rm/*.yaml``).

    Either ``name_or_path`` (hub id or local folder) or ``tiny`` (``TinyRMSpec`` fields: the offline tiny RM of
    :mod:`ts2.models.tiny_rm`) is set. ``ref_rewards`` is the reward source of the AlpacaEval reference answers:
    a file under the data directory (the shipped FsfairX scores) or ``"score"`` (score them with this RM).
    """

    id: str = "rm"
    name_or_path: str | None = None
    tiny: Mapping[str, Any] | None = None
    quirk: bool = True
    user_text: str = "instruction"
    dtype: str = "bfloat16"
    batch_size: int = 8
    max_length: int | None = None
    device: str = "auto"
    ref_rewards: str = "score"

    def __post_init__(self) -> None:
        if (self.name_or_path is None) == (self.tiny is None):
            raise ValueError(f"rm {self.id!r}: set exactly one of name_or_path and tiny.")
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
_SPECIAL = re.compile(r"<\|[^<>|\s]*\|>")


def paper_detok_user_text(templated_prompt: str) -> str:
    """The user text the official scorer actually sent to the RM for *sampled* responses (emulated).

    Official ``evaluation_reward.py`` (run with ``--detokenizer_path``) takes the policy's chat-templated prompt,
    decodes it with ``skip_special_tokens=True`` and deletes ``"user\\n\\n"`` and ``"assistant\\n\\n"``; with the
    Llama-3.1-Instruct template the RM's user turn therefore starts with ``"system\\n\\nCutting Knowledge
    Date: ..."``. Emulated here by deleting ``<|...|>`` special-token strings; the shipped GPT-4 reference
    rewards were scored with the bare instruction, so this mode only serves to reproduce that asymmetry.
    """
    return _SPECIAL.sub("", templated_prompt).replace("user\n\n", "").replace("assistant\n\n", "")


def render_ids(tokenizer: Any, user: str, response: str, *, quirk: bool) -> list[int]:
    """Token ids of [user, assistant: response] under the tokenizer's chat template.

    ``quirk=True`` appends the empty assistant header (``add_generation_prompt=True``), as the paper's code does.
    The template already holds the BOS token, so the text is tokenized without added special tokens.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"RM tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template.")
    conv = [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
    text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=quirk)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _safe_pad_id(preferred: int | None, last_tokens: set[int], vocab_size: int) -> int:
    """A pad id that is no row's last real token (else the model would read one position too early)."""
    if preferred is not None and preferred not in last_tokens:
        return int(preferred)
    for cand in range(vocab_size):
        if cand not in last_tokens:
            return cand
    raise ValueError("No usable pad id: every vocabulary id ends some sequence in the batch.")


@torch.no_grad()
def score_token_sequences(
    model: Any,
    seqs: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    pad_id: int | None = None,
    desc: str = "RM scoring",
    progress: bool = True,
) -> np.ndarray:
    """Score each token sequence with a sequence-classification model (num_labels=1): the logit at its last token.

    Rows are length-sorted (longest first, so memory problems show at once), right-padded, and batched; results
    come back in input order as float64.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    for i, s in enumerate(seqs):
        if len(s) == 0:
            raise ValueError(f"Sequence {i} is empty: nothing to score.")
    text_cfg = model.config.get_text_config()
    preferred = pad_id if pad_id is not None else text_cfg.pad_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out = np.empty(len(seqs), dtype=np.float64)
    saved = text_cfg.pad_token_id
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
            idx = order[start : start + batch_size]
            rows = [list(seqs[i]) for i in idx]
            width = max(len(r) for r in rows)
            pid = _safe_pad_id(preferred, {r[-1] for r in rows}, int(text_cfg.vocab_size))
            ids = torch.full((len(rows), width), pid, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, r in enumerate(rows):
                ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
                mask[j, : len(r)] = 1
            text_cfg.pad_token_id = pid  # the model finds the read position from it
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            if logits.shape[-1] != 1:
                raise ValueError(f"Reward model returns {logits.shape[-1]} logits per sequence; expected 1.")
            out[idx] = logits[:, 0].float().cpu().numpy()
    finally:
        text_cfg.pad_token_id = saved
    return out


# ------------------------------------------------------------------------------------------------- scorer
def _tensor_digest(h: Any, t: torch.Tensor, limit: int = 1 << 16) -> None:
    flat = t.detach().reshape(-1)
    h.update(str(tuple(t.shape)).encode())
    h.update(flat[:limit].float().cpu().numpy().tobytes())
    h.update(flat[-limit:].float().cpu().numpy().tobytes())


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
        user_text: str = "instruction",
        batch_size: int = 8,
        max_length: int | None = None,
        name: str = "rm",
        progress: bool = True,
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
        self.name = name
        self.progress = progress
        self.num_truncated = 0
        self._fingerprint: str | None = None

    # ---- construction
    @classmethod
    def from_config(
        cls, cfg: RMConfig | Mapping[str, Any] | str | os.PathLike[str], **kw: Any
    ) -> RewardScorer:
        """Load the RM of ``conf/rm/*.yaml`` (building the tiny RM on first use)."""
        cfg = RMConfig.from_any(cfg)
        path = resolve_rm_path(cfg)
        model, tok = load_reward_model(path, dtype=cfg.dtype, device=cfg.device)
        _check_tiny_build(path, cfg)
        return cls(
            model,
            tok,
            quirk=cfg.quirk,
            user_text=cfg.user_text,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            name=cfg.id,
            **kw,
        )

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
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)
            self._fingerprint = f"{safe}-{h.hexdigest()[:12]}"
        return self._fingerprint

    # ---- scoring
    def user_content(self, instruction: str, templated_prompt: str | None = None) -> str:
        """The user turn shown to the RM (see ``user_text``).

        With ``paper_detok``, items without a templated prompt (the GPT-4 reference answers) get the bare
        instruction, as in the official run; sample callers must pass the prompt.
        """
        if self.user_text == "instruction" or templated_prompt is None:
            return instruction
        return paper_detok_user_text(templated_prompt)

    def encode(self, instruction: str, response: str, templated_prompt: str | None = None) -> list[int]:
        """The exact token ids the RM reads; the score is taken at the last one."""
        ids = render_ids(
            self.tokenizer, self.user_content(instruction, templated_prompt), response, quirk=self.quirk
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
            full = render_ids(
                self.tokenizer,
                self.user_content(x, None if templated_prompts is None else templated_prompts[i]),
                y,
                quirk=self.quirk,
            )
            if self.max_length is not None and len(full) > self.max_length:
                self.num_truncated += 1
                full = full[-self.max_length :]
            seqs.append(full)
        return score_token_sequences(
            self.model, seqs, batch_size=self.batch_size, desc=desc, progress=self.progress
        )


# -------------------------------------------------------------------------------------------------- loading
def resolve_rm_path(cfg: RMConfig) -> str:
    """Local folder or hub id of the RM; builds the tiny RM on first use."""
    if cfg.tiny is not None:
        from ts2.models.tiny_rm import TinyRMSpec, build_tiny_rm

        return str(build_tiny_rm(TinyRMSpec.from_dict(cfg.tiny)))
    return str(cfg.name_or_path)


def _looks_local(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a local folder."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") >= 2


def load_reward_model(name_or_path: str, *, dtype: str = "bfloat16", device: str = "auto") -> tuple[Any, Any]:
    """``AutoModelForSequenceClassification`` (num_labels=1) + tokenizer, with a clear error if unavailable."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if _looks_local(name_or_path) and not Path(name_or_path).expanduser().exists():
        raise FileNotFoundError(
            _HOW_TO_GET.format(name=name_or_path, err=f"local folder {name_or_path} does not exist")
        )
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype {dtype!r} is not a torch dtype name.")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=torch_dtype)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(_HOW_TO_GET.format(name=name_or_path, err=str(err).splitlines()[0])) from err
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
    """Warn when a tiny RM is applied with another read convention or length than it was trained with."""
    build = Path(path) / "rm_build.json"
    if not build.is_file():
        return
    spec = json.loads(build.read_text()).get("spec", {})
    for key, used in (("quirk", cfg.quirk), ("max_length", cfg.max_length)):
        if key in spec and spec[key] != used:
            warnings.warn(
                f"Tiny RM {path} was trained with {key}={spec[key]!r} but is applied with {key}={used!r}.",
                stacklevel=3,
            )
