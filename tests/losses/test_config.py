"""`ts2.losses.config`: conf/loss/<id>.yaml on a structured-config schema built from the loss dataclass, so
`_target_`, the types and the defaults are written once, and a mistyped override fails at composition."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ts2.conf import CONF_DIR
from ts2.losses import LOSSES, GEMLoss, LabelSmoothingLoss, TS2Loss
from ts2.losses.config import OBJECTIVE_KEYS, loss_schema
from ts2.objective import make_loss

LOSS_DIR = Path(CONF_DIR) / "loss"


def test_every_loss_has_its_yaml_and_every_yaml_a_loss() -> None:
    assert {p.stem for p in LOSS_DIR.glob("*.yaml")} == {*LOSSES, "ts2_adaptive"}


@pytest.mark.parametrize("loss_id", [*LOSSES, "ts2_adaptive"])
def test_yaml_composes_to_the_dataclass_defaults(compose, loss_id: str) -> None:
    cfg = compose([f"loss={loss_id}"]).loss
    assert cfg.id == loss_id and (cfg.fused, cfg.chunk_size) == (False, None)
    loss, settings = make_loss(cfg)
    expected = TS2Loss(adaptive=True) if loss_id == "ts2_adaptive" else LOSSES[loss_id]()
    assert loss == expected and (settings.id, settings.fused, settings.chunk_size) == (loss_id, False, None)
    # Defaults are not repeated in the YAML: no hyperparameter key is written there.
    written = OmegaConf.load(LOSS_DIR / f"{loss_id}.yaml")
    fields = {f.name for f in dataclasses.fields(type(loss))}
    assert set(written) & fields == ({"adaptive"} if loss_id == "ts2_adaptive" else set())


def test_schema_fields_types_and_target() -> None:
    node = OmegaConf.structured(loss_schema(TS2Loss))
    assert OmegaConf.to_container(node) == {
        "_target_": "ts2.losses.TS2Loss",
        "id": "ts2",
        "alpha": 0.25,
        "clamp": 0.99,
        "temperature": 1.0,
        "adaptive": False,
        "fused": False,
        "chunk_size": None,
    }
    kwargs = {k: v for k, v in OmegaConf.to_container(node).items() if k not in OBJECTIVE_KEYS}
    assert instantiate(kwargs) == TS2Loss()
    assert loss_schema(GEMLoss)().h == "logsigmoid" and loss_schema(LabelSmoothingLoss)().epsilon == 0.1


def test_overrides_and_sweeps_reach_the_loss(compose) -> None:
    for alpha in (0.1, 0.25):
        loss, _ = make_loss(compose(["method=ts2", f"loss.alpha={alpha}", "loss.clamp=null"]).loss)
        assert loss == TS2Loss(alpha=alpha, clamp=None)
    loss, settings = make_loss(compose(["method=ce_ls", "loss.epsilon=0.2", "loss.fused=true"]).loss)
    assert loss == LabelSmoothingLoss(epsilon=0.2) and settings.fused
    assert make_loss(compose(["loss=ts2_adaptive", "loss.alpha=1"]).loss)[0] == TS2Loss(
        alpha=1.0, adaptive=True
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "loss.alpha=abc",
            r"Value 'abc' of type 'str' could not be converted to Float\s+full_key: loss.alpha",
        ),
        (
            "loss.alpha=true",
            r"Value 'True' of type 'bool' could not be converted to Float\s+full_key: loss.alpha",
        ),
        ("loss.clamp=high", r"could not be converted to Float\s+full_key: loss.clamp"),
        ("loss.adaptive=maybe", r"is not a valid bool \(type str\)\s+full_key: loss.adaptive"),
        ("loss.fused=abc", r"full_key: loss.fused"),
        ("loss.chunk_size=1.5", r"could not be converted to Integer\s+full_key: loss.chunk_size"),
        ("loss.beta=0.5", r"Could not override 'loss.beta'"),  # not a setting of ts2
    ],
)
def test_mistyped_override_names_the_key_and_the_type(compose, override: str, message: str) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose(["method=ts2", override])
    # Hydra's message ("Error merging override ...") plus its cause's: what the CLI prints.
    shown = f"{err.value}\n{err.value.__cause__ or ''}"
    assert re.search(message, shown), shown


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "loss.alpha=-0.1",
            r"Invalid loss config \(loss=ts2\): ts2: alpha must be a finite number >= 0, got -0.1",
        ),
        ("loss.clamp=1.0", r"loss=ts2\): ts2: clamp must be in \(0.0, 1.0\), got 1.0"),
        ("loss.temperature=0", r"temperature must be a finite number > 0"),
    ],
)
def test_bad_value_is_a_clear_error(compose, override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_loss(compose(["method=ts2", override]).loss)


def test_gem_h_and_ls_epsilon_are_checked(compose) -> None:
    with pytest.raises(ValueError, match=r"loss=gem\): gem: h must be one of"):
        make_loss(compose(["method=gem", "loss.h=tanh"]).loss)
    with pytest.raises(ValueError, match=r"loss=ce_ls\): ce_ls: epsilon must be in"):
        make_loss(compose(["method=ce_ls", "loss.epsilon=1.0"]).loss)


def test_cli_error_names_alpha_and_float(tmp_path) -> None:
    """Through the real entry point: the message a user sees, and nothing written."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ts2.train",
            "method=ts2",
            "loss.alpha=true",
            f"paths.runs_dir={tmp_path}/runs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "loss.alpha" in out.stderr and "could not be converted to Float" in out.stderr, out.stderr
    assert not (tmp_path / "runs").exists()
