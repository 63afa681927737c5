"""The core on a GPU: masked evaluations per second of a 7B-shaped Llama, engine against one mask at a time.

On CUDA (the default when available) the model is a Llama config shaped like Llama-2-7B (hidden 4096, MLP 11008,
32 layers, 32 heads, vocabulary 32,000) with random weights in bf16, built on the GPU; the tokens are random ids
(8 x 512). Without CUDA, or with ``--device cpu``, a small Llama config in fp32 runs in seconds instead, so that
the script is ready (the CPU smoke configuration, not a GPU result). The masks are permutation walks over the
players (blocks or sublayers), the same on both sides; every coalition is scored by the same readout (head, then
the mean next-token cross-entropy in fp32, uncapped: random weights put most tokens above a cap of ln V).

Measured, as medians of interleaved repeats after a warm-up:
- masked evaluations per second through the ``BatchedEngine`` (prefix sharing) and one mask at a time (the
  backbone under ``MaskedModel.active``, then the readout);
- achieved FLOP/s against a peak: the matmul FLOPs of the sublayers each coalition keeps (q, k, v, o
  projections, causal attention scores and values, the three MLP matrices) plus the head; norms, rotary and
  softmax are not counted. The peak is ``--peak-tflops`` (on CUDA in bf16 by default 989, the dense bf16 figure
  of an H100 / H200 SXM), else the rate of one large matmul measured here;
- the peak memory of each side (``torch.cuda.max_memory_allocated``; null on CPU);
- the engine's values against the one-at-a-time values (max absolute difference, and whether bitwise equal).
The last line is one JSON object; the figures are in ``benchmarks/RESULTS.md``.

    python benchmarks/gpu.py                            # CUDA: 7B-shaped, bf16, 8 x 512 tokens, 4 walks
    python benchmarks/gpu.py --layers 16 --walks 2      # fewer layers and masks, to fit the time
    python benchmarks/gpu.py --granularity sublayer     # 64 players: attention and MLP of each layer
    python benchmarks/gpu.py --device cpu               # CPU smoke configuration (small Llama, fp32)
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from engine import interleaved_medians, permutation_walk_masks
from tqdm import tqdm
from transformers import AutoModelForCausalLM, LlamaConfig

from shapley_svc.engine import BatchedEngine, TokenBatch
from shapley_svc.engine.batched import count_present, lexicographic_order, shared_layer_prefix
from shapley_svc.model.layouts import layout_for
from shapley_svc.model.loading import resolve_device
from shapley_svc.model.masked import MaskedModel

logger = logging.getLogger("benchmarks.gpu")

PRESETS: dict[str, dict[str, int]] = {
    "7b": {  # Llama-2-7B's shape
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 4096,
    },
    "small": {  # the CPU smoke configuration: 7B's MLP and vocabulary per hidden unit, at hidden 256
        "vocab_size": 2000,
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "max_position_embeddings": 1024,
    },
    "tiny": {  # the unit-test model of ASSETS.md, for the test of this script
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    },
}
DEFAULTS = {  # per device: preset, dtype, batch, sequence length, walks, repeats
    "cuda": {"preset": "7b", "dtype": "bfloat16", "batch": 8, "seq": 512, "walks": 4, "repeats": 3},
    "cpu": {"preset": "small", "dtype": "float32", "batch": 2, "seq": 128, "walks": 2, "repeats": 3},
}
H100_BF16_DENSE_TFLOPS = 989.0  # H100 / H200 SXM, bf16 tensor cores, dense (no sparsity)
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 2e-2}  # |engine - alone| on a loss in nats


@dataclass(frozen=True)
class SublayerFlops:
    """Matmul FLOPs of one decoder layer's attention and MLP, and of the head, on one token batch."""

    attention: float
    mlp: float
    head: float


def sublayer_flops(config: LlamaConfig, batch: int, seq: int) -> SublayerFlops:
    """2 x multiply-adds of every matmul; the attention scores causal (s(s+1)/2 query-key pairs per head)."""
    tokens = batch * seq
    hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    projections = 2 * tokens * hidden * (2 * heads * head_dim + 2 * kv_heads * head_dim)  # q and o, k and v
    scores_and_values = 2 * 2 * batch * heads * head_dim * seq * (seq + 1) / 2
    mlp = 2 * tokens * hidden * config.intermediate_size * 3  # gate, up, down
    head = 2 * batch * (seq - 1) * hidden * config.vocab_size  # the readout scores positions 0..s-2
    return SublayerFlops(attention=projections + scores_and_values, mlp=mlp, head=head)


def alone_flops(plans: np.ndarray, flops: SublayerFlops) -> float:
    """FLOPs of evaluating each bool[k, L, 2] plan on its own: every sublayer it keeps, plus the head."""
    kept = plans.sum(axis=(0, 1))  # [2]: attentions, MLPs over all masks
    return float(kept[0] * flops.attention + kept[1] * flops.mlp + len(plans) * flops.head)


def engine_flops(plans: np.ndarray, flops: SublayerFlops) -> tuple[float, int]:
    """FLOPs the engine runs on the same plans (in layer order, each mask from the prefix it shares with the
    previous one), and the decoder-layer forwards that makes, to check against the engine's own count."""
    total, layer_forwards, previous = 0.0, 0, None
    for index in lexicographic_order(plans.reshape(len(plans), -1)):
        plan = plans[index]
        start = 0 if previous is None else shared_layer_prefix(previous, plan)
        kept = plan[start:].sum(axis=0)
        total += kept[0] * flops.attention + kept[1] * flops.mlp + flops.head
        layer_forwards += int(plan[start:].any(axis=1).sum())
        previous = plan
    return total, layer_forwards


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    """TFLOP/s of one [size, size] x [size, size] matmul, the median of ``repeats`` after a warm-up."""
    generator = torch.Generator(device=device).manual_seed(0)
    left = torch.randn((size, size), device=device, dtype=dtype, generator=generator)
    right = torch.randn((size, size), device=device, dtype=dtype, generator=generator)
    times = []
    for _ in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        torch.matmul(left, right)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times[1:]) / 1e12


def build_model(config: LlamaConfig, dtype: torch.dtype, device: torch.device, seed: int) -> torch.nn.Module:
    """A random-init Llama of ``config`` built directly on ``device`` (no host copy of 13 GB of weights)."""
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), torch.device(device):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    model.requires_grad_(False)
    return model


def next_token_loss(masked: MaskedModel, ids: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The readout: head on final hidden [b, s, d] -> mean next-token cross-entropy, a 0-d fp32 tensor."""
    targets = ids[:, 1:].reshape(-1)

    def readout(final_hidden: torch.Tensor) -> torch.Tensor:
        logits = masked.head(final_hidden[:, :-1]).float()  # [b, s-1, V]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets)

    return readout


def peak_memory(device: torch.device, run: Callable[[], object]) -> int | None:
    """Peak bytes allocated on ``device`` while ``run`` runs; on CPU, where torch does not track it, None
    (and ``run`` is not run)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def benchmark(args: argparse.Namespace) -> dict[str, object]:
    device = resolve_device(args.device)
    dtype: torch.dtype = getattr(torch, args.dtype)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    shape = dict(PRESETS[args.preset])
    if args.layers is not None:
        shape["num_hidden_layers"] = args.layers
    config = LlamaConfig(**shape)
    started = time.perf_counter()
    model = build_model(config, dtype, device, args.seed)
    masked = MaskedModel(model, layout_for("llama"), args.granularity)
    weights_bytes = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    logger.info(
        "%s preset, %d layers, %.2f B parameters (%.1f GB), %s on %s, built in %.1f s",
        args.preset,
        masked.num_layers,
        sum(parameter.numel() for parameter in model.parameters()) / 1e9,
        weights_bytes / 1e9,
        args.dtype,
        device,
        time.perf_counter() - started,
    )
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=generator).to(device)
    masks = permutation_walk_masks(masked.n_players, args.walks, args.seed)
    plans = np.stack([masked.layer_plan(mask) for mask in masks])  # [k, L, 2]
    readout = next_token_loss(masked, ids)
    engine = BatchedEngine(masked)
    batch = TokenBatch(ids)

    def run_engine() -> torch.Tensor:
        with tqdm(total=len(masks), desc="engine", leave=False) as bar:
            values = engine.evaluate(masks, batch, readout=readout, progress=bar.update)
        result = torch.stack(values).cpu()
        synchronize(device)
        return result

    def run_alone() -> torch.Tensor:
        values = []
        with torch.inference_mode():
            for mask in tqdm(masks, desc="one at a time", leave=False):
                with masked.active(mask):
                    hidden = masked.backbone(input_ids=ids, use_cache=False).last_hidden_state
                values.append(readout(hidden))
        result = torch.stack(values).cpu()
        synchronize(device)
        return result

    engine_values = run_engine()  # also the warm-up of both sides
    engine_layer_forwards = engine.stats.layer_forwards
    alone_values = run_alone()
    difference = float((engine_values - alone_values).abs().max())
    tolerance = args.tolerance if args.tolerance is not None else TOLERANCE[args.dtype]
    engine_peak, alone_peak = peak_memory(device, run_engine), peak_memory(device, run_alone)
    times = interleaved_medians({"engine": run_engine, "alone": run_alone}, args.repeats, warm_up=False)

    flops = sublayer_flops(config, args.batch, args.seq)
    kept_flops = alone_flops(plans, flops)
    executed_flops, counted_forwards = engine_flops(plans, flops)
    if counted_forwards != engine_layer_forwards:
        logger.warning(
            "the engine ran %d layer forwards but the FLOP count assumes %d: its prefix sharing has changed, "
            "so engine_executed_tflop is off; update engine_flops",
            engine_layer_forwards,
            counted_forwards,
        )
    measured_tflops = matmul_tflops(device, dtype, 8192 if device.type == "cuda" else 512, 10)
    if args.peak_tflops is not None:
        peak_tflops, peak_source = args.peak_tflops, "--peak-tflops"
    elif device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        peak_tflops, peak_source = H100_BF16_DENSE_TFLOPS, "H100/H200 SXM dense bf16 (assumed)"
    else:
        peak_tflops, peak_source = measured_tflops, f"one {args.dtype} matmul measured here"
    engine_rate, alone_rate = len(masks) / times["engine"], len(masks) / times["alone"]
    bound_rate = peak_tflops * 1e12 / (kept_flops / len(masks))
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "preset": args.preset,
        "layers": masked.num_layers,
        "granularity": masked.granularity.value,
        "dtype": args.dtype,
        "tokens": f"{args.batch}x{args.seq}",
        "masks": len(masks),
        "walks": args.walks,
        "threads": torch.get_num_threads(),
        "engine_masks_per_s": engine_rate,
        "alone_masks_per_s": alone_rate,
        "engine_over_alone": engine_rate / alone_rate,
        "engine_s": times["engine"],
        "alone_s": times["alone"],
        "engine_layer_forwards": engine_layer_forwards,
        "alone_layer_forwards": count_present(masks, masked),
        "kept_tflop": kept_flops / 1e12,
        "engine_executed_tflop": executed_flops / 1e12,
        "engine_flop_ratio": executed_flops / kept_flops,
        "peak_tflops": peak_tflops,
        "peak_source": peak_source,
        "matmul_tflops_measured": measured_tflops,
        "flop_bound_masks_per_s": bound_rate,
        "alone_achieved_tflops": kept_flops / times["alone"] / 1e12,
        "engine_achieved_tflops": executed_flops / times["engine"] / 1e12,
        "alone_over_flop_bound": alone_rate / bound_rate,
        "engine_over_flop_bound": engine_rate / bound_rate,
        "engine_achieved_over_peak": executed_flops / times["engine"] / 1e12 / peak_tflops,
        "weights_bytes": weights_bytes,
        "engine_peak_memory_bytes": engine_peak,
        "alone_peak_memory_bytes": alone_peak,
        "values_max_abs_diff": difference,
        "values_bitwise_equal": bool(torch.equal(engine_values, alone_values)),
        "value_tolerance": tolerance,
        "values_within_tolerance": difference <= tolerance,
        "total_seconds": time.perf_counter() - started,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default: 7b on CUDA, small on CPU")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: the preset's)")
    parser.add_argument("--dtype", choices=sorted(TOLERANCE), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--granularity", choices=("block", "sublayer"), default="block")
    parser.add_argument("--batch", type=int, default=None, help="sequences per token batch (default 8 CUDA, 2 CPU)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 512 CUDA, 128 CPU)")
    parser.add_argument("--walks", type=int, default=None, help="permutation walks, n masks each (default 4 / 2)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved timed repeats (default 3)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s the bound assumes")
    parser.add_argument("--tolerance", type=float, default=None, help="max |engine - alone| loss (default by dtype)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    defaults = DEFAULTS["cuda" if args.device.startswith("cuda") else "cpu"]
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.layers is not None and args.layers < 1:
        parser.error(f"--layers must be at least 1, got {args.layers}")
    if args.seq < 2 or args.seq > PRESETS[args.preset]["max_position_embeddings"]:
        parser.error(f"--seq must lie in 2..{PRESETS[args.preset]['max_position_embeddings']}, got {args.seq}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Run the benchmark; prints one JSON object on the last line and returns it."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = benchmark(args)
    logger.info(
        "engine %.3g masks/s, one at a time %.3g (x%.2f); engine at %.3f of the %.3g TFLOP/s peak",
        results["engine_masks_per_s"],
        results["alone_masks_per_s"],
        results["engine_over_alone"],
        results["engine_achieved_over_peak"],
        results["peak_tflops"],
    )
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
