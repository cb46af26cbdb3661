"""Many LM students over one base model in memory: each student is a LoRA adapter and a base hash.

Every LM student fine-tunes the same small base, so a user with ten text tasks should not hold ten
copies of it. A student trained with LoRA is stored as its low-rank pairs (a few MB) and the content
hash of the base it was trained on. At load, the base is read once per process and path; each of its
adapted linear layers gets a switch, every student adds its pairs under its own name, and answers
with its own pairs switched on (`SharedBase.using`). The sum is PEFT's unmerged LoRA forward,
base(x) + B(A(x)) * alpha / r, so inference needs neither PEFT nor a merged copy of the base.

A small model's step on a CPU waits for its weights to come from memory, so the base can answer in
fewer bytes (`convert_weights`): bfloat16 prepacked for oneDNN (half the bytes, the float32 answer on
99-100% of the test rows seen) or dynamic int8 (a quarter, but float32's answer on only 84-93%).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import itertools
import logging
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"
WEIGHTS = ("float32", "bf16", "int8")
_A, _B = ".lora_A", ".lora_B"


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the model's parameters and buffers (names, dtypes, shapes and bytes), wherever
    they were loaded from: a student records it, and refuses a base whose weights differ."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class _Switch:
    """Which adapter the layers of one base add, shared by all of them (None: the base alone)."""

    active: str | None = None


class Bf16Linear(nn.Module):
    """A linear layer with bfloat16 weights, reordered once into oneDNN's blocked layout. It takes and
    gives float32, so norms, attention and the residual stream keep float32's precision. Unpacked
    bfloat16 is no faster than float32 for one token, because the weights are reordered on every call."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().to(torch.bfloat16), 1)
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self.packed, self.bias, "none", [], "")
        return out.to(x.dtype)


class SwitchedLinear(nn.Module):
    """A base linear layer plus whichever student's low-rank pair is switched on. A pair is kept as
    float32 A^T and (B * scale)^T: two small matmuls per layer and no transposes on the way."""

    def __init__(self, base: nn.Module, switch: _Switch):
        super().__init__()
        self.base = base
        self.switch = switch
        self.pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        pair = self.pairs.get(self.switch.active) if self.switch.active is not None else None
        if pair is None:
            return out
        a_t, b_t = pair
        return out + ((x.to(a_t.dtype) @ a_t) @ b_t).to(out.dtype)


class SharedBase:
    """One base model in memory and the adapters of the students loaded over it."""

    def __init__(self, model: nn.Module, fingerprint: str):
        self.model = model.eval()
        self.fingerprint = fingerprint
        self.lock = threading.RLock()  # one student's answer at a time: the switch is the base's state
        self._switch = _Switch()
        self._names = itertools.count(1)

    def add(self, weights: Mapping[str, torch.Tensor], scale: float) -> str:
        """Put a student's pairs on the base; returns the name it answers under."""
        name = f"adapter-{next(self._names)}"
        with self.lock:
            for path in sorted(key[: -len(_A)] for key in weights if key.endswith(_A)):
                layer = self._switched(path)
                a, b = weights[path + _A].float(), weights[path + _B].float()
                if a.shape[1] != layer.base.in_features or b.shape[0] != layer.base.out_features:
                    shape = (layer.base.out_features, layer.base.in_features)
                    raise ValueError(f"adapter pair {path} does not fit the base layer {shape}")
                layer.pairs[name] = (a.t().contiguous(), (b * scale).t().contiguous())
        return name

    def remove(self, name: str) -> None:
        with self.lock:
            for module in self.model.modules():
                if isinstance(module, SwitchedLinear):
                    module.pairs.pop(name, None)

    @contextmanager
    def using(self, name: str) -> Iterator[None]:
        """The base answers as that student until the block ends (other students wait for it)."""
        with self.lock:
            before, self._switch.active = self._switch.active, name
            try:
                yield
            finally:
                self._switch.active = before

    def _switched(self, path: str) -> SwitchedLinear:
        module = self.model.get_submodule(path)
        if isinstance(module, SwitchedLinear):
            return module
        if not isinstance(module, nn.Linear | QuantizedLinear | Bf16Linear):
            raise ValueError(f"the adapter names {path}, which is not a linear layer of the base")
        parent, _, attribute = path.rpartition(".")
        switched = SwitchedLinear(module, self._switch)
        setattr(self.model.get_submodule(parent) if parent else self.model, attribute, switched)
        return switched


# (resolved path, weights) -> base
_BASES: weakref.WeakValueDictionary[tuple[str, str], SharedBase] = weakref.WeakValueDictionary()
_BASES_LOCK = threading.Lock()


def bf16_supported() -> bool:
    """Whether oneDNN runs bfloat16 matmuls natively here (AVX512-BF16 or AMX); elsewhere it emulates
    them, slower than float32."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _check_form(weights: str) -> None:
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}: expected one of {', '.join(WEIGHTS)}")


def runnable_weights(weights: str) -> str:
    """The form this CPU will run: bf16 without native support is float32 (the same answers, only
    slower). Resolved once at load, so the manifest a student reports and its base's cache key agree."""
    _check_form(weights)
    if weights == "bf16" and not bf16_supported():
        log.warning("this CPU has no native bfloat16 matmul: the LM student runs in float32")
        return "float32"
    return weights


def convert_weights(model: nn.Module, weights: str) -> nn.Module:
    """The model's linear layers (output head included) in the given form, in place. The form is one
    `runnable_weights` resolved: it is resolved once, where a student is loaded or trained."""
    _check_form(weights)
    if weights == "float32":
        return model
    if weights == "int8":
        quantize_int8(model)
    else:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, Bf16Linear(child))
    _let_go_of_the_file(model)
    return model


def _let_go_of_the_file(model: nn.Module) -> None:
    """Copy what the conversion kept (embeddings, norms) out of the safetensors file mapping. While one
    tensor views it, the mapping stays, and every page the conversion read counts as resident memory:
    the bf16 student held 1.3 GB instead of 0.8."""
    for parameter in model.parameters():
        parameter.data = parameter.data.clone()
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = buffer.clone()
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc keeps freed blocks in its arenas: give them back
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def quantize_int8(model: nn.Module) -> nn.Module:
    """The decoder's linear layers as dynamic int8 ones, in place: a quarter of the bytes to read per
    token, which is what a small model's step on a CPU waits for. The output head stays float32: it is
    tied to the embeddings (an int8 copy would add memory), and the confidences read its logits.
    Adapter pairs stay float32 on top."""
    decoder = getattr(model, "model", model)
    torch.ao.quantization.quantize_dynamic(decoder, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return model


def shared_base(path: str, fingerprint: str, weights: str = "float32") -> SharedBase:
    """The base at `path`, loaded once per process (and per form of `weights`) while any student holds
    it; refused unless its weights hash to `fingerprint`, the base the adapter was trained on."""
    with _BASES_LOCK:
        base = _BASES.get((path, weights))
        if base is None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            base = SharedBase(model, weights_fingerprint(model))  # of the weights as trained on
            convert_weights(model, weights)
            _BASES[(path, weights)] = base
    if base.fingerprint != fingerprint:
        raise ValueError(
            f"the student was trained on a base with weights {fingerprint[:12]}, "
            f"but {path} has {base.fingerprint[:12]}: "
            "point train.lm.base_model at the same base (or retrain the task)"
        )
    return base


def adapter_of(peft_model: nn.Module) -> tuple[dict[str, torch.Tensor], float]:
    """The low-rank pairs of a trained PEFT LoRA model, keyed by the base's own module paths, and their
    common scale (alpha / r). Read from the modules, so no PEFT import is needed to write them."""
    weights: dict[str, torch.Tensor] = {}
    scales: set[float] = set()
    for name, module in peft_model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, nn.ModuleDict) or "default" not in lora_a:
            continue
        path = name.removeprefix("base_model.model.")
        weights[path + _A] = lora_a["default"].weight.detach().cpu().contiguous()
        weights[path + _B] = module.lora_B["default"].weight.detach().cpu().contiguous()  # type: ignore[index]
        scales.add(float(module.scaling["default"]))  # type: ignore[index]
    if not weights or len(scales) != 1:
        found = f"{len(weights) // 2} pairs and scales {sorted(scales)}"
        raise ValueError(f"expected LoRA pairs with one scale, found {found}")
    return weights, scales.pop()


def restore_adapter(peft_model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Put pairs read by `adapter_of` back into the PEFT model they came from (an earlier epoch's)."""
    with torch.no_grad():
        for key, value in weights.items():
            path, _, half = key.rpartition(".lora_")
            module = peft_model.get_submodule("base_model.model." + path)
            getattr(module, "lora_" + half)["default"].weight.copy_(value)


def save_adapter(directory: Path, weights: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file(dict(weights), str(Path(directory) / ADAPTER_FILE))


def load_adapter(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / ADAPTER_FILE))
