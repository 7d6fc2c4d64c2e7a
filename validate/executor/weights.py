"""Where the executor's weights come from: seeded random tensors or a local checkpoint.

Both are looked up by the Hugging Face checkpoint names of ``ModelSpec.layer_tensors()``
(prefixed with ``layer_prefix``) and ``ModelSpec.head_tensors()``, so a checkpoint loads
by name and random weights do not depend on where a tensor is placed.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import torch

from simulator.errors import ModelError
from simulator.models import ModelSpec

_POOL_ELEMS = 1 << 24  # larger random tensors are cut from a seeded pool (randn runs at ~0.2 G/s)
_OUTPUT_PROJECTIONS = ("out_proj.weight", "o_proj.weight", "fc2.weight", "down_proj.weight", ".w2.weight")


def layer_prefix(spec: ModelSpec, i: int) -> str:
    return f"model.decoder.layers.{i}." if spec.is_opt else f"model.layers.{i}."


def all_tensor_names(spec: ModelSpec) -> list[tuple[str, tuple[int, ...]]]:
    """Every parameter of the model as (full checkpoint name, shape)."""
    out = [(layer_prefix(spec, i) + t.name, t.shape) for i in range(spec.num_layers) for t in spec.layer_tensors()]
    return out + [(t.name, t.shape) for t in spec.head_tensors()]


class RandomWeights:
    """Seeded random weights, scaled so activations stay O(1) through any depth.

    Matrices ~ N(0, 1/in_features); projections back into the residual stream are further
    scaled by 1/sqrt(2 num_layers) (GPT-2's residual scaling); embeddings and the LM head
    ~ N(0, 1/hidden); norm weights 1 + N(0, 0.1^2), norm biases N(0, 0.1^2); linear biases
    N(0, 0.02^2). Each tensor has its own generator seeded from (seed, name).
    """

    def __init__(self, spec: ModelSpec, seed: int = 0):
        self.spec = spec
        self.seed = int(seed)
        self._pool = None

    def _generator(self, name: str) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63))

    def _normal(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(shape)
        if n <= _POOL_ELEMS:
            return torch.randn(shape, generator=self._generator(name))
        if self._pool is None:
            self._pool = torch.randn(2 * _POOL_ELEMS, generator=torch.Generator().manual_seed(self.seed))
        start = int(torch.randint(0, _POOL_ELEMS, (1,), generator=self._generator(name)))
        out = torch.empty(n)
        for lo in range(0, n, _POOL_ELEMS):
            m = min(_POOL_ELEMS, n - lo)
            out[lo:lo + m] = self._pool[start:start + m]
        return out.view(shape)

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        spec = self.spec
        x = self._normal(name, shape)
        if len(shape) == 1:
            if "norm" in name:
                return 1.0 + 0.1 * x if name.endswith("weight") else 0.1 * x
            return 0.02 * x
        if "embed" in name or name == "lm_head.weight":
            return x / math.sqrt(spec.hidden_size)
        std = 1.0 / math.sqrt(shape[1])
        if name.endswith(_OUTPUT_PROJECTIONS):
            std /= math.sqrt(2 * spec.num_layers)
        return x * std


class CheckpointWeights:
    """Tensors of a local safetensors file or a folder of ``*.safetensors`` shards.

    Names are those of the Hugging Face checkpoints; a name missing with its ``model.``
    prefix is also looked up without it (some OPT checkpoints omit it).
    """

    def __init__(self, spec: ModelSpec, path: str):
        from safetensors import safe_open

        self.spec = spec
        self.path = Path(path)
        if self.path.is_file():
            files = [self.path]
        elif self.path.is_dir():
            files = sorted(self.path.glob("*.safetensors"))
        else:
            raise ModelError(f"checkpoint {path}: no such file or directory")
        if not files:
            raise ModelError(f"checkpoint {path}: no *.safetensors file (convert .bin checkpoints first)")
        self._handles = {}
        self._where = {}
        for f in files:
            try:
                handle = safe_open(str(f), framework="pt")
            except Exception as e:  # safetensors raises its own error types
                raise ModelError(f"checkpoint {f}: cannot read it as safetensors ({e})") from None
            self._handles[f] = handle
            for key in handle.keys():
                self._where[key] = f

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        key = name
        if key not in self._where and key.startswith("model.") and key[len("model."):] in self._where:
            key = key[len("model."):]
        if key not in self._where:
            raise ModelError(f"checkpoint {self.path}: tensor {name!r} is missing")
        t = self._handles[self._where[key]].get_tensor(key)
        if tuple(t.shape) != tuple(shape):
            raise ModelError(f"checkpoint {self.path}: tensor {name!r} has shape {tuple(t.shape)}, "
                             f"{self.spec.name} expects {tuple(shape)}")
        return t


def weight_source(spec: ModelSpec, seed: int = 0, checkpoint: str | None = None):
    return CheckpointWeights(spec, checkpoint) if checkpoint else RandomWeights(spec, seed)


def state_dict(spec: ModelSpec, seed: int = 0, checkpoint: str | None = None,
               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Every parameter by full checkpoint name (tied embeddings once), e.g. to load into HF models."""
    src = weight_source(spec, seed, checkpoint)
    return {name: src.get(name, shape).to(dtype) for name, shape in all_tensor_names(spec)}
