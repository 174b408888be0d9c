"""Which parameters SFT trains: every one (full fine-tuning), or the top k decoder layers and the final norm.

Two settings of the model config (``conf/model/*.yaml``), applied by :mod:`ts2.train` right after the model loads:

* ``model.trainable_layers``: ``null`` trains every decoder layer (full fine-tuning, the paper's recipe, PAPER.md
  §3); ``k`` trains only the top k decoder layers (the last k of ``model.layers``) and the final norm, and freezes
  the lower ones. It exists for the CPU budget of the small scale (issue 20): a frozen layer below every trained one
  costs its forward only, no backward at all.
* ``model.train_embeddings``: whether the token embedding matrix and the LM head train. In a model with tied
  embeddings (SmolLM2, the tiny base) they are one tensor, so one switch decides both; in an untied one (Llama-3.1-8B)
  both follow it, so the head never trains while the embedding it is the output of stays frozen or the other way
  round. With trainable embeddings the backward pass runs through every layer down to the embedding (frozen layers
  still pass activation gradients), so freezing lower layers saves little unless the embeddings are frozen too.

Cost of one trained token (fwd + bwd, ``F`` the forward FLOPs of the layers, ``H`` of the LM head): full
fine-tuning ≈ 3(F + H); top k of L layers with frozen embeddings ≈ F + H + 2kF/L + H (the head's backward gives
the hidden-state gradient only, no weight gradient: :mod:`ts2.losses.fused` skips it for a frozen head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Trainable:
    """``layers``: the top k decoder layers trained (None: all); ``embeddings``: the embedding matrix and LM head."""

    layers: int | None = None
    embeddings: bool = True

    @property
    def full(self) -> bool:
        """Full fine-tuning: every parameter trains."""
        return self.layers is None and self.embeddings

    def settings(self) -> dict[str, Any]:
        """The two settings under their config names (as run.json records them)."""
        return {"trainable_layers": self.layers, "train_embeddings": self.embeddings}

    def describe(self) -> str:
        """One line for table headers and logs, e.g. "top 10 of 30 decoder layers + final norm; embeddings frozen"."""
        if self.full:
            return "full fine-tuning"
        layers = "every decoder layer" if self.layers is None else f"top {self.layers} decoder layers"
        emb = "embeddings and LM head trained" if self.embeddings else "embeddings and LM head frozen"
        return f"{layers} + final norm; {emb}"


def trainable_of(model_cfg: Any) -> Trainable:
    """The :class:`Trainable` of a model config, checked (a clear error names the key and the fix)."""
    get = model_cfg.get if hasattr(model_cfg, "get") else lambda k, d=None: getattr(model_cfg, k, d)
    layers, emb = get("trainable_layers", None), get("train_embeddings", True)
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 1):
        raise ValueError(
            f"model.trainable_layers={layers!r}: give a positive number of top decoder layers to train, or null "
            "for full fine-tuning."
        )
    if not isinstance(emb, bool):
        raise ValueError(f"model.train_embeddings={emb!r}: must be true or false.")
    return Trainable(layers, emb)


def _decoder(model: Any) -> Any:
    """The decoder stack (``model.model`` of a Llama/Qwen causal LM): its ``layers`` and final ``norm``."""
    body = getattr(model, "base_model", model)
    if not hasattr(body, "layers") or not hasattr(body, "norm"):
        raise ValueError(
            f"model.trainable_layers needs a decoder with `layers` and a final `norm` (Llama, Qwen); "
            f"{type(model).__name__} has none: set model.trainable_layers=null."
        )
    return body


def apply_trainable(model: Any, trainable: Trainable) -> dict[str, Any]:
    """Set ``requires_grad`` of every parameter of ``model`` by ``trainable``; return what trains.

    Frozen: the decoder layers below the top ``trainable.layers`` and, unless ``trainable.embeddings``, the input
    embedding and the LM head. Everything else (the top layers, the final norm) trains. Returns
    ``{"trainable_layers", "train_embeddings", "num_layers", "tied_embeddings", "trainable_params",
    "total_params", "describe"}`` (parameters counted once even when tied).
    """
    body = _decoder(model)
    num_layers = len(body.layers)
    if trainable.layers is not None and trainable.layers > num_layers:
        raise ValueError(
            f"model.trainable_layers={trainable.layers} exceeds the model's {num_layers} decoder layers: give "
            f"1..{num_layers}, or null for full fine-tuning."
        )
    frozen: set[int] = set()
    if trainable.layers is not None:
        for layer in body.layers[: num_layers - trainable.layers]:
            frozen.update(id(p) for p in layer.parameters())
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not trainable.embeddings:
        for module in (emb, head):
            if module is not None:
                frozen.update(id(p) for p in module.parameters())
    for p in model.parameters():  # tied weights are one Parameter: listed once
        p.requires_grad_(id(p) not in frozen)
    params = list(model.parameters())
    tied = head is not None and emb is not None and head.weight is emb.weight
    return {
        **trainable.settings(),
        "num_layers": num_layers,
        "tied_embeddings": tied,
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "total_params": sum(p.numel() for p in params),
        "describe": trainable.describe(),
    }
