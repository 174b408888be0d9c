"""Hydra structured-config schemas of the losses (TS², ICLR 2026): ``conf/loss/<id>.yaml`` gets its
``_target_``, its typed hyperparameters and their defaults from the loss's dataclass, so that they are
written down once (the dataclass fields) and a mistyped override fails at composition, naming the key and
the expected type (``loss.alpha=abc``: "Value 'abc' of type 'str' could not be converted to Float";
``loss.alpha=true`` is refused too, not read as 1.0).

For each loss class ``C`` of `ts2.losses.LOSSES`, the node ``schema/loss/<C.id>`` of Hydra's ConfigStore is a
dataclass with the fields
``_target_`` (the class, so ``hydra.utils.instantiate`` builds ``C(**hyperparameters)``), ``id`` (``C.id``),
every field of ``C`` with its type and default, and the objective's own settings ``fused`` (bool, False:
fused chunked LM head + loss, `ts2.losses.fused`) and ``chunk_size`` (int or None: rows per chunk).
A loss YAML then reads ``defaults: [/schema/loss/<id>@_here_, _self_]`` plus whatever it changes.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Optional

from ts2.losses.base import TokenLoss

SCHEMA_GROUP = "schema/loss"
OBJECTIVE_KEYS = ("id", "fused", "chunk_size")
"""Keys of a loss config that are settings of the objective, not arguments of the loss class."""


def target_path(cls: type) -> str:
    """The dotted path Hydra's ``_target_`` resolves to `cls`: ``ts2.losses.<Name>`` for a loss exported by
    the package (its module name, e.g. ``ts2.losses.sparsemax``, is shadowed there by a function of the
    same name), else ``<module>.<qualname>``."""
    import ts2.losses

    if getattr(ts2.losses, cls.__name__, None) is cls:
        return f"ts2.losses.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _omegaconf_type(annotation: Any) -> Any:
    """``X | None`` as ``Optional[X]``: the spelling every OmegaConf 2.x accepts."""
    args = typing.get_args(annotation)
    if type(None) in args and len(args) == 2:
        (inner,) = (a for a in args if a is not type(None))
        return Optional[inner]  # noqa: UP045 (OmegaConf)
    return annotation


def loss_schema(cls: type[TokenLoss]) -> type:
    """The structured-config dataclass of loss class `cls` (see the module docstring)."""
    hints = typing.get_type_hints(cls)
    fields: list[tuple[str, Any, Any]] = [
        ("_target_", str, dataclasses.field(default=target_path(cls))),
        ("id", str, dataclasses.field(default=cls.id)),
    ]
    for f in dataclasses.fields(cls):
        fields.append((f.name, _omegaconf_type(hints[f.name]), dataclasses.field(default=f.default)))
    fields += [
        ("fused", bool, dataclasses.field(default=False)),
        ("chunk_size", Optional[int], dataclasses.field(default=None)),  # noqa: UP045 (OmegaConf)
    ]
    return dataclasses.make_dataclass(f"{cls.__name__}Config", fields)


def register_loss_schemas() -> None:
    """Store ``schema/loss/<id>`` for every loss of `ts2.losses.LOSSES` in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    from ts2.losses import LOSSES

    store = ConfigStore.instance()
    for loss_id, cls in LOSSES.items():
        store.store(group=SCHEMA_GROUP, name=loss_id, node=loss_schema(cls))
