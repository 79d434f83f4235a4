"""Memory planner: what each role needs on a device, whether a plan fits, and what would fit instead.

Pure arithmetic on a model's shape (no torch, no Ray), so a plan for a 16 GB card or a cluster can be
checked on a laptop before anything is loaded. Every term names its formula and its source:

- weights: bf16/fp32 = P x bytes; NF4 4-bit with double quantisation (Dettmers et al. 2023, "QLoRA",
  sec. 2-3): 1/2 byte per weight + one 8-bit absmax per 64-weight block + one fp32 absmax per 256 blocks,
  the way bitsandbytes 0.50 stores them (checked to the byte against a loaded model in the tests);
- LoRA (Hu et al. 2021): r (d_in + d_out) parameters per adapted matrix, kept in fp32 with an fp32 gradient
  and AdamW's two fp32 moments (Kingma & Ba 2015; Loshchilov & Hutter 2019): 16 bytes per parameter;
- activations: the tensors autograd saves for backward, counted per layer the way Korthikanti et al. 2022
  ("Reducing Activation Recomputation in Large Transformer Models") count them, but for this code path
  (Qwen3 decoder layer, fused attention, peft LoRA, ``learners/logprobs.py``); the list is in
  :func:`layer_saved_bytes`. With gradient checkpointing only each layer's input is kept and one layer is
  recomputed at a time (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost");
- logits: B x T x V, upcast to fp32 for the log-softmax (``learners/logprobs.py``), plus the transient
  gradients of the log-softmax in backward;
- KV cache (Kwon et al. 2023, "PagedAttention"): 2 (K and V) x layers x kv_heads x head_dim x bytes per
  token, divided by the tensor-parallel degree;
- vLLM's budget (vllm/v1/worker/gpu_worker.py, ``determine_available_memory``): KV cache =
  gpu_memory_utilization x device memory - weights - peak activations - non-torch memory - CUDA graphs.

Constants that only a GPU can measure (CUDA context, vLLM's non-torch memory and CUDA-graph pool) are
named allowances below; ``bench/gpu_smoke.py`` prints the measured values beside them.

Command line (docs/planner.md has the output for config/rtx4080.yaml)::

    python -m cluster.memory config=rtx4080 --gpu rtx4080 [key.sub=value ...]
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, ClassVar, Optional

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Allowances for what only a GPU shows (overwrite them with bench/gpu_smoke.py's measurements):
CUDA_CONTEXT_GIB = 0.5
"""Per process that touches the GPU (driver context, cuBLAS handles): outside any allocator's count."""
VLLM_NON_TORCH_GIB = 0.25
"""vLLM's non-torch memory inside its budget (NCCL/cuBLAS workspaces), as its profiler counts it."""
VLLM_CUDAGRAPH_GIB = 0.5
"""CUDA-graph pool when ``enforce_eager`` is false; vLLM subtracts its estimate from the KV cache."""
NF4_MATRIX_OVERHEAD = 16 * 4 + 256 * 4 + 4
"""Per quantised matrix: the NF4 code table (16 fp32), the 8-bit absmax code (256 fp32) and an fp32 offset."""


# ---------------------------------------------------------------------------------------------- shapes

@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that memory depends on (Qwen3/Llama layout)."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied_embeddings: bool = True
    qk_norm: bool = True
    """Qwen3 RMS-normalises q and k per head (adds their pre-norm copies to the saved activations)."""

    def linears(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each matrix of one decoder layer."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linears().values())

    @property
    def other_params(self) -> int:
        """Embeddings (and an untied LM head) plus every RMSNorm weight: what 4-bit loading leaves unquantised."""
        norms = self.layers * (2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0)) + self.hidden
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2) + norms

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "ModelShape":
        """From a transformers ``config.json`` dict (Qwen2/Qwen3/Llama/Mistral keys)."""
        heads = cfg["num_attention_heads"]
        return cls(vocab=cfg["vocab_size"], hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"], heads=heads,
                   kv_heads=cfg.get("num_key_value_heads") or heads,
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
                   intermediate=cfg["intermediate_size"], tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   qk_norm=cfg.get("model_type", "") == "qwen3")

    @classmethod
    def load(cls, name_or_path: str) -> "ModelShape":
        """A local model folder (reads its config.json) or a hub name from :data:`KNOWN_MODELS`."""
        if not name_or_path:
            raise ValueError("model.path is empty (the project's tiny model); give the planner model.path=<a model "
                             f"folder> or one of {sorted(KNOWN_MODELS)}")
        p = Path(name_or_path)
        if (p / "config.json").exists():
            return cls.from_hf_config(json.loads((p / "config.json").read_text()))
        if name_or_path in KNOWN_MODELS:
            return KNOWN_MODELS[name_or_path]
        raise ValueError(f"model.path={name_or_path!r} is neither a local folder with config.json nor one of the "
                         f"shapes the planner knows ({sorted(KNOWN_MODELS)}); point model.path at a downloaded copy")


# Architecture numbers from each model's config.json on the Hugging Face hub (no hub access needed here).
KNOWN_MODELS: dict[str, ModelShape] = {
    "Qwen/Qwen3-0.6B": ModelShape(151936, 1024, 28, 16, 8, 128, 3072, tied_embeddings=True),
    "Qwen/Qwen3-1.7B": ModelShape(151936, 2048, 28, 16, 8, 128, 6144, tied_embeddings=True),
    "Qwen/Qwen3-4B": ModelShape(151936, 2560, 36, 32, 8, 128, 9728, tied_embeddings=True),
    "Qwen/Qwen3-8B": ModelShape(151936, 4096, 36, 32, 8, 128, 12288, tied_embeddings=False),
}

# Usable memory per device as the driver reports it (nvidia-smi's total).
GPUS_GIB: dict[str, float] = {
    "rtx4080": 16376 / 1024, "rtx4090": 24564 / 1024, "l4": 23034 / 1024, "a10g": 23028 / 1024,
    "a100-40": 40960 / 1024, "a100-80": 81920 / 1024, "l40s": 46068 / 1024, "h100-80": 81559 / 1024,
}


def gpu_memory_gib(gpu: str | float) -> float:
    if isinstance(gpu, (int, float)):
        return float(gpu)
    try:
        return float(gpu)
    except ValueError:
        pass
    if gpu not in GPUS_GIB:
        raise ValueError(f"unknown GPU {gpu!r}; name one of {sorted(GPUS_GIB)} or give its memory in GiB (e.g. 16)")
    return GPUS_GIB[gpu]


# ---------------------------------------------------------------------------------------------- weights

def nf4_matrix_bytes(n: int, blocksize: int = 64, blocksize2: int = 256) -> int:
    """Bytes of one d_in x d_out = n weight matrix in bitsandbytes NF4 with double quantisation:
    ceil(n/2) packed 4-bit codes + ceil(n/64) 8-bit absmax + 4 ceil(ceil(n/64)/256) fp32 second-level absmax
    + the per-matrix code tables (QLoRA, Dettmers et al. 2023: about 0.516 bytes per weight)."""
    blocks = math.ceil(n / blocksize)
    return math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / blocksize2) + NF4_MATRIX_OVERHEAD


def weight_bytes(shape: ModelShape, quant: str, dtype: str) -> int:
    """Frozen base weights: ``quant='nf4'`` quantises every decoder linear (embeddings, LM head and norms stay in
    ``dtype``, as transformers' bitsandbytes integration leaves them); ``quant='none'``: P x bytes(dtype)."""
    b = DTYPE_BYTES[dtype]
    if quant == "none":
        return shape.params * b
    if quant != "nf4":
        raise ValueError(f"quantisation {quant!r} is not one of nf4, none")
    per_layer = sum(nf4_matrix_bytes(a * c) for a, c in shape.linears().values())
    return shape.layers * per_layer + shape.other_params * b


def lora_params(shape: ModelShape, rank: int, targets: tuple[str, ...] | list[str]) -> int:
    """LoRA (Hu et al. 2021): r (d_in + d_out) per adapted matrix, for every layer."""
    lin = shape.linears()
    unknown = [t for t in targets if t not in lin]
    if unknown:
        raise ValueError(f"model.lora.target_modules has {unknown}, which are not matrices of this model ({list(lin)})")
    return shape.layers * sum(rank * (lin[t][0] + lin[t][1]) for t in targets)


def trainable_state_bytes(n_params: int, param_bytes: int = 4, optimizer_moments: int = 2) -> dict[str, int]:
    """Trainable weights, their gradients and AdamW's first and second moments (Kingma & Ba 2015), each
    ``param_bytes`` per parameter (peft keeps LoRA weights in fp32 even over a bf16 base)."""
    return {"weights": n_params * param_bytes, "grads": n_params * param_bytes,
            "optimizer": n_params * param_bytes * optimizer_moments}


# ---------------------------------------------------------------------------------------------- activations

class SavedForBackward:
    """``with SavedForBackward(model) as saved: loss = f(model)`` counts the bytes autograd keeps for the backward
    pass inside the block, one entry per storage (``saved.bytes``), parameters excluded: the measured counterpart
    of :func:`layer_saved_bytes`."""

    def __init__(self, model):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, int] = {}

    def _pack(self, t):
        st = t.untyped_storage()
        if st.data_ptr() not in self.params:
            self.storages[st.data_ptr()] = st.nbytes()
        return t

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())

    def __enter__(self) -> "SavedForBackward":
        import torch

        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def layer_saved_bytes(shape: ModelShape, dtype: str, targets: tuple[str, ...] | list[str], rank: int,
                      finetune: str = "lora", padded: bool = False, seq_len: int = 1) -> dict[str, float]:
    """Bytes one decoder layer keeps for backward, per token, as autograd saves them (b = bytes of ``dtype``):

    - RMSNorm (x2): the fp32-upcast input and its rsqrt (4h + 4 each): 2 (4h + 4);
    - q/k norms (Qwen3): fp32 pre-norm q and k and their rsqrt: 4 (a + kv) d + 4 (a + kv);
    - attention (fused kernel): q, k, v after RoPE and the output, b (2a + 2kv) d, plus the fp32 logsumexp 4a;
      with padding (a mask) transformers copies k and v to all a heads, b (4a) d (a view when kv = 1), and passes
      a float mask, b T per token (B x T x T per layer);
    - MLP: gate, up and SiLU(gate), 3 b i;
    - inputs of the adapted matrices (what LoRA's A needs): shared with the tensors above when the adapter and the
      base share a dtype, else peft casts the input to fp32 once per adapted matrix, 4 d_in each; the MLP product
      feeding down_proj is saved only when down_proj is adapted;
    - LoRA A outputs (what B needs): 4 r per adapted matrix.

    ``finetune='full'`` adapts every matrix in ``dtype``. Counted against ``torch.autograd.graph.saved_tensors_hooks``
    on the tiny models (tests/test_memory_planner.py).
    """
    b = DTYPE_BYTES[dtype]
    h, a, kv, d, i = shape.hidden, shape.heads, shape.kv_heads, shape.head_dim, shape.intermediate
    lin = shape.linears()
    targets = list(LINEARS) if finetune == "full" else list(targets)
    adapter_b = b if finetune == "full" else 4
    out = {"norm inputs": 2 * (4 * h + 4)}
    if shape.qk_norm:
        out["q/k norm inputs"] = 4 * (a + kv) * d + 4 * (a + kv)
    # a mask makes transformers repeat k and v to every query head; with one kv head that repeat is a view
    kv_heads_saved = a if padded and kv > 1 else kv
    out["attention q/k/v/out"] = b * (2 * a + 2 * kv_heads_saved) * d + 4 * a
    if padded:
        out["attention mask"] = b * seq_len
    out["mlp gate/up/act"] = 3 * b * i
    if adapter_b == b:  # one shared copy per distinct input; o_proj's input is the attention output already counted
        shared = {"q_proj": "n1", "k_proj": "n1", "v_proj": "n1", "gate_proj": "n2", "up_proj": "n2", "down_proj": "p"}
        sizes = {"n1": h, "n2": h, "p": i}
        out["adapted inputs"] = b * sum(sizes[s] for s in {shared[t] for t in targets if t in shared})
    else:
        out["adapted inputs"] = 4 * sum(lin[t][0] for t in targets)
    if finetune != "full":
        out["lora A outputs"] = 4 * rank * len(targets)
    return out


def logits_bytes(vocab: int, dtype: str) -> dict[str, float]:
    """Per token, for ``learners/logprobs.py`` (log p(y) = logit_y - logsumexp(logits) on fp32 logits):
    saved = the fp32 logits (4V) + labels (8) + logsumexp (4); transient at the forward/backward turn = three more
    fp32 V-wide tensors (exp, the logsumexp gradient, the scattered gather gradient), plus the compute-dtype
    logits themselves when the model runs below fp32 (2V in bf16)."""
    b = DTYPE_BYTES[dtype]
    return {"saved": 4 * vocab + 12, "transient": 3 * 4 * vocab + (b * vocab if b != 4 else 0)}


class Terms(Mapping):
    """Named byte counts, typed: each term is a field (the arithmetic reads fields), and the object also reads
    as a mapping from the terms' labels to their values (``m["peak"]``, ``m.items()``) for reports and callers
    that print or sum them. ``LABELS`` maps field or property name -> label, in report order; a term whose
    ``present`` is false is left out of the mapping (a step has either the logits' peak or one layer's)."""

    LABELS: ClassVar[dict[str, str]] = {}
    COUNTS: ClassVar[frozenset[str]] = frozenset()
    """Labels of terms that are counts (tokens, sequences), not bytes."""

    def present(self, name: str) -> bool:
        return True

    def _labelled(self) -> dict[str, float]:
        return {label: getattr(self, name) for name, label in self.LABELS.items() if self.present(name)}

    def __getitem__(self, label: str) -> float:
        return self._labelled()[label]

    def __iter__(self):
        return iter(self._labelled())

    def __len__(self) -> int:
        return len(self._labelled())


@dataclass(frozen=True)
class LearnerMemory(Terms):
    """Bytes of one learner's training step, term by term (see :func:`learner_memory`)."""

    weights: float
    """The frozen base (0 under a full fine-tune, whose weights are the trainable state)."""
    trainable_weights: float
    gradients: float
    optimizer_state: float
    activations_kept: float
    """What autograd holds for backward across all layers (their inputs only, under checkpointing)."""
    logits: float
    """The fp32 logits, saved and transient, at the forward/backward turn."""
    layer_backward: float
    """One layer's backward workspace (plus its recomputed activations under checkpointing)."""
    dequantised_matrix: float = 0
    """QLoRA: bitsandbytes dequantises one matrix at a time."""
    quantised: bool = False

    LABELS: ClassVar[dict[str, str]] = {
        "weights": "weights", "trainable_weights": "trainable weights", "gradients": "gradients",
        "optimizer_state": "optimizer state", "activations_kept": "activations kept",
        "logits": "logits (+ their backward)", "layer_backward": "one layer's backward",
        "dequantised_matrix": "dequantised matrix", "peak": "peak", "resident": "resident"}

    @property
    def logits_dominate(self) -> bool:
        return self.logits >= self.layer_backward

    @property
    def transient(self) -> float:
        """The larger of the two peaks that do not coexist: the logits' turn or one layer's backward."""
        return self.logits if self.logits_dominate else self.layer_backward

    @property
    def peak(self) -> float:
        return (self.weights + self.trainable_weights + self.gradients + self.optimizer_state
                + self.activations_kept + self.transient + self.dequantised_matrix)

    @property
    def resident(self) -> float:
        """What stays on the device between steps: weights, trainable weights, AdamW's moments."""
        return self.weights + self.trainable_weights + self.optimizer_state

    def present(self, name: str) -> bool:
        if name == "logits":
            return self.logits_dominate
        if name == "layer_backward":
            return not self.logits_dominate
        if name == "dequantised_matrix":
            return self.quantised
        return True

    def largest_term(self) -> str:
        """The field name of the largest term of the peak."""
        parts = [n for n in ("weights", "trainable_weights", "gradients", "optimizer_state", "activations_kept",
                             "logits", "layer_backward", "dequantised_matrix") if self.present(n)]
        return max(parts, key=partial(getattr, self))


def learner_memory(shape: ModelShape, *, finetune: str = "qlora", dtype: str = "bfloat16", rank: int = 16,
                   targets: tuple[str, ...] | list[str] = LINEARS, micro_batch: int = 1, seq_len: int = 512,
                   gradient_checkpointing: bool = False, padded: bool = True) -> LearnerMemory:
    """Peak bytes of one learner's training step (forward + backward + AdamW) on a ``micro_batch x seq_len`` batch.

    With T = micro_batch x seq_len tokens, A1 one layer's saved bytes per token, G the logits' and W_b the
    backward workspace (the gradients of two MLP-wide tensors, 2 b i per token):

    - no checkpointing:  act = T (L A1 + F) + max(T (G_saved + G_transient), T W_b)
    - checkpointing:     act = T (L b h + F) + max(T (G_saved + G_transient), T (A1 + W_b))

    where F is the final norm's saved input (4h + 4). Steady state: AdamW's moments already exist.
    Returns the terms; ``peak`` is their sum and ``resident`` what stays on the device between steps.
    """
    if finetune not in ("qlora", "lora", "full"):
        raise ValueError(f"model.finetune must be qlora, lora or full, got {finetune!r}")
    b = DTYPE_BYTES[dtype]
    T = micro_batch * seq_len
    L = shape.layers
    base = weight_bytes(shape, "nf4" if finetune == "qlora" else "none", dtype)
    if finetune == "full":
        states = trainable_state_bytes(shape.params, b)
        base = 0  # the weights are the trainable state
    else:
        states = trainable_state_bytes(lora_params(shape, rank, targets))
    a1 = sum(layer_saved_bytes(shape, dtype, targets, rank, finetune, padded, seq_len).values())
    final_norm = 4 * shape.hidden + 4
    lg = logits_bytes(shape.vocab, dtype)
    workspace = T * 2 * b * shape.intermediate
    if gradient_checkpointing:
        kept = T * (L * b * shape.hidden + final_norm)
        layer_peak = T * a1 + workspace
    else:
        kept = T * (L * a1 + final_norm)
        layer_peak = workspace
    quantised = finetune == "qlora"
    return LearnerMemory(
        weights=base, trainable_weights=states["weights"], gradients=states["grads"],
        optimizer_state=states["optimizer"], activations_kept=kept, logits=T * (lg["saved"] + lg["transient"]),
        layer_backward=layer_peak, quantised=quantised,
        dequantised_matrix=max(x * y for x, y in shape.linears().values()) * b if quantised else 0)


# ---------------------------------------------------------------------------------------------- rollout (vLLM)

def kv_bytes_per_token(shape: ModelShape, kv_dtype: str = "bfloat16", tensor_parallel: int = 1) -> float:
    """PagedAttention KV cache (Kwon et al. 2023): 2 L kv_heads d bytes per token, kv heads split over TP ranks
    (replicated when there are fewer kv heads than ranks)."""
    kv_per_rank = max(1, math.ceil(shape.kv_heads / tensor_parallel))
    return 2 * shape.layers * kv_per_rank * shape.head_dim * DTYPE_BYTES[kv_dtype]


@dataclass(frozen=True)
class RolloutMemory(Terms):
    """One vLLM engine's memory on each of its GPUs, term by term (see :func:`rollout_memory`)."""

    budget: float
    """gpu_memory_utilization x device memory: everything vLLM may take."""
    weights: float
    lora_slots: float
    activations: float
    """vLLM's profile run: the widest layer over max_num_batched_tokens, fp32 logits of max_num_seqs rows."""
    non_torch: float
    cuda_graphs: float
    kv_per_token: float
    max_model_len: int

    LABELS: ClassVar[dict[str, str]] = {
        "budget": "budget", "weights": "weights", "lora_slots": "lora slots",
        "activations": "activations (profile run)", "non_torch": "non-torch", "cuda_graphs": "cuda graphs",
        "kv_cache": "kv cache", "kv_tokens": "kv tokens", "sequences": "sequences at max_model_len",
        "min_budget": "min budget", "asleep": "asleep"}
    COUNTS: ClassVar[frozenset[str]] = frozenset({"kv tokens", "sequences at max_model_len"})

    @property
    def fixed(self) -> float:
        """What the engine holds whatever the KV cache: weights, LoRA slots, activations, allowances."""
        return self.weights + self.lora_slots + self.activations + self.non_torch + self.cuda_graphs

    @property
    def kv_cache(self) -> float:
        """The rest of the budget (negative when the budget cannot hold the engine)."""
        return self.budget - self.fixed

    @property
    def kv_tokens(self) -> float:
        return max(0.0, self.kv_cache) / self.kv_per_token

    @property
    def sequences(self) -> float:
        """Full-length (max_model_len) sequences the KV cache holds at once."""
        return self.kv_tokens / self.max_model_len

    @property
    def one_sequence(self) -> float:
        """KV bytes of one sequence of max_model_len: the least vLLM starts with."""
        return self.kv_per_token * self.max_model_len

    @property
    def min_budget(self) -> float:
        """The smallest budget vLLM starts with: the engine plus room for one sequence of max_model_len."""
        return self.fixed + self.one_sequence

    @property
    def asleep(self) -> float:
        """Left on the device while sleeping: level 1 offloads the weights and drops the KV cache."""
        return self.cuda_graphs


def rollout_memory(shape: ModelShape, device_gib: float, *, gpu_memory_utilization: float, max_model_len: int,
                   weights_quant: str = "none", dtype: str = "bfloat16", tensor_parallel: int = 1,
                   max_lora_rank: int = 16, max_loras: int = 1, enforce_eager: bool = True,
                   max_num_seqs: int = 256, max_num_batched_tokens: int = 8192) -> RolloutMemory:
    """vLLM engine per GPU, as vLLM sizes it: budget = u x device; KV cache = budget - weights/TP - LoRA slots
    - profile-run activations - non-torch - CUDA graphs. The LoRA slots hold ``max_loras`` adapters of rank
    ``max_lora_rank`` on every matrix in ``dtype``. Profile-run activations: ``max_num_batched_tokens`` x
    (3i + 4h + (a + 2 kv) d) x b for the widest layer plus fp32 logits and probabilities of ``max_num_seqs``
    rows (vLLM's defaults for GPUs under 70 GiB: 8192 batched tokens, 256 sequences).
    ``kv tokens`` is how many tokens fit and ``sequences at max_model_len`` how many full-length sequences.
    """
    b = DTYPE_BYTES[dtype]
    h, i, d = shape.hidden, shape.intermediate, shape.head_dim
    act = (max_num_batched_tokens * (3 * i + 4 * h + (shape.heads + 2 * shape.kv_heads) * d) * b / tensor_parallel
           + 2 * 4 * max_num_seqs * shape.vocab)
    return RolloutMemory(
        budget=gpu_memory_utilization * device_gib * GiB,
        weights=weight_bytes(shape, weights_quant, dtype) / tensor_parallel,
        lora_slots=max_loras * lora_params(shape, max_lora_rank, LINEARS) * b / tensor_parallel,
        activations=act, non_torch=VLLM_NON_TORCH_GIB * GiB,
        cuda_graphs=0.0 if enforce_eager else VLLM_CUDAGRAPH_GIB * GiB,
        kv_per_token=kv_bytes_per_token(shape, dtype, tensor_parallel), max_model_len=max_model_len)


# ---------------------------------------------------------------------------------------------- plans

@dataclass
class MemoryPlan:
    """The planner's answer for one config on one kind of device."""

    mode: str
    device_gib: float
    roles: dict[str, Terms]
    """Per role, its terms in bytes (``learner``: a :class:`LearnerMemory`; ``rollout``: a :class:`RolloutMemory`)."""
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    """colocate: what shares the card while generating and while training."""
    problems: list[str] = field(default_factory=list)
    """Each misfit, in the config's own keys, with what to change."""
    notes: list[str] = field(default_factory=list)
    largest_micro_batch: int = 0
    largest_seq_len: int = 0
    utilization_range: tuple[float, float] = (0.0, 0.0)
    """colocate: the gpu_memory_utilization values that leave vLLM one max-length sequence and the learner its
    resident state (empty when min > max)."""

    @property
    def fits(self) -> bool:
        return not self.problems

    def report(self) -> str:
        def g(x: float) -> str:
            return f"{x / GiB:6.2f} GiB"

        lines = [f"memory plan: {self.mode} on a {self.device_gib:.2f} GiB device"]
        for role, terms in self.roles.items():
            lines.append(f"  {role}:")
            for k, v in terms.items():
                lines.append(f"    {k:<30} " + (f"{v:12,.0f}" if k in terms.COUNTS else g(v)))
        for phase, terms in self.phases.items():
            lines.append(f"  phase '{phase}': " + ", ".join(f"{k} {v / GiB:.2f}" for k, v in terms.items()) + " GiB")
        lines.append(f"  largest train.micro_batch_size that fits: {self.largest_micro_batch}; "
                     f"largest sequence at this micro batch: {self.largest_seq_len} tokens")
        lo, hi = self.utilization_range
        if self.mode == "colocate":
            lines.append(f"  rollout.gpu_memory_utilization that works: {lo:.2f} .. {hi:.2f}" if lo <= hi else
                         f"  no rollout.gpu_memory_utilization works ({lo:.2f} needed, {hi:.2f} left)")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append("  verdict: FITS" if self.fits else "  verdict: DOES NOT FIT")
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _largest(fits: Callable[[int], bool], hi: int) -> int:
    """Largest n in [1, hi] with fits(n) (fits is monotone); 0 when even 1 does not fit."""
    if not fits(1):
        return 0
    lo = 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


@dataclass(frozen=True)
class LearnerRoom:
    """One learner's device: the learner's settings, the bytes usable there and what else they hold."""

    shape: ModelShape
    settings: dict
    """:func:`learner_memory`'s keywords from ``cfg.model`` (finetune, dtype, rank, targets, checkpointing)."""
    usable: float
    beside: float
    """Bytes held beside the learner while it trains (CUDA contexts; the engine, asleep or awake, colocated)."""

    def memory(self, micro_batch: int, seq_len: int) -> LearnerMemory:
        return learner_memory(self.shape, micro_batch=micro_batch, seq_len=seq_len, **self.settings)

    def fits(self, micro_batch: int, seq_len: int) -> bool:
        return self.memory(micro_batch, seq_len).peak + self.beside <= self.usable

    def largest_micro_batch(self, seq_len: int, at_most: int = 4096) -> int:
        return _largest(partial(self._fits_micro_batch, seq_len), at_most)

    def largest_seq_len(self, micro_batch: int, at_most: int = 1 << 20) -> int:
        return _largest(partial(self.fits, micro_batch), at_most)

    def _fits_micro_batch(self, seq_len: int, micro_batch: int) -> bool:
        return self.fits(micro_batch, seq_len)


def plan_memory(cfg, shape: ModelShape, gpu: str | float, *, seq_len: Optional[int] = None,
                rollout_weights: str = "none", margin_gib: float = 0.5, padded: bool = True) -> MemoryPlan:
    """Check ``cfg`` (a :class:`config.Config`) for ``shape`` on GPUs of ``gpu`` (a name or GiB each).

    ``seq_len``: learner tokens per sequence (default ``rollout.max_model_len``, the longest prompt + completion the
    engine allows). ``rollout_weights``: 'none' (vLLM serves the bf16 base, as the design does) or 'nf4'.
    ``margin_gib``: room kept free on every device for allocator fragmentation.
    colocate: the engine and the learner share one card; with ``rollout.sleep_between_phases`` the engine sleeps
    (weights to host memory, KV cache dropped) while the learner trains, and the learner must have released its
    cached activations (``torch.cuda.empty_cache()``) before the engine wakes.
    split: each engine on ``rollout.tensor_parallel_size`` cards, each learner on its own card, micro batches
    per learner (data parallel).
    """
    dev = gpu_memory_gib(gpu)
    total = dev * GiB
    usable = total - margin_gib * GiB
    ctx = CUDA_CONTEXT_GIB * GiB
    m, r, t = cfg.model, cfg.rollout, cfg.train
    seq = seq_len or r.max_model_len
    settings = dict(finetune=m.finetune, dtype=m.dtype, rank=m.lora.r, targets=tuple(m.lora.target_modules),
                    gradient_checkpointing=m.gradient_checkpointing, padded=padded)
    lrn = learner_memory(shape, micro_batch=t.micro_batch_size, seq_len=seq, **settings)
    eng = rollout_memory(shape, dev, gpu_memory_utilization=r.gpu_memory_utilization, max_model_len=r.max_model_len,
                         weights_quant=rollout_weights, tensor_parallel=r.tensor_parallel_size,
                         max_lora_rank=m.lora.r, enforce_eager=r.enforce_eager)
    plan = MemoryPlan(cfg.cluster.mode, dev, roles={"learner": lrn, "rollout": eng})
    seqs_per_step = t.prompts_per_step * r.n_samples
    if 1 <= eng.sequences < seqs_per_step:
        plan.notes.append(_waves_note(eng, r, t))

    if cfg.cluster.mode == "colocate":
        engine_in_training = eng.asleep if r.sleep_between_phases else eng.budget
        room = LearnerRoom(shape, settings, usable, beside=2 * ctx + engine_in_training)
        beside_engine = 2 * ctx + lrn.resident  # generating: the learner's resident state and both contexts
        plan.phases["generate"] = {"vLLM": eng.budget, "learner resident": lrn.resident, "contexts": 2 * ctx}
        plan.phases["train"] = {"learner peak": lrn.peak,
                                "vLLM " + ("asleep" if r.sleep_between_phases else "awake"): engine_in_training,
                                "contexts": 2 * ctx}
        lo, hi = eng.min_budget / total, (usable - beside_engine) / total
        plan.utilization_range = (lo, hi)
        if eng.kv_cache < eng.one_sequence:
            plan.problems.append(_engine_short(eng, r, dev, lo, hi))
        elif eng.budget + beside_engine > usable:
            plan.problems.append(_generating_short(eng, lrn, r, dev, 2 * ctx, usable, hi))
        where = "training (vLLM " + ("asleep" if r.sleep_between_phases
                                      else "awake, rollout.sleep_between_phases=false") + ")"
    else:
        room = LearnerRoom(shape, settings, usable, beside=ctx)
        hi = (usable - ctx) / total
        if eng.kv_cache < eng.one_sequence:
            plan.problems.append(_engine_short(eng, r, dev, eng.min_budget / total, hi))
        elif eng.budget + ctx > usable:
            plan.problems.append(_split_engine_short(eng, r, hi))
        where = "each learner GPU"
    if not room.fits(t.micro_batch_size, seq):
        plan.problems.append(_learner_short(lrn, room, t.micro_batch_size, seq, m.gradient_checkpointing, where))
    plan.largest_micro_batch = room.largest_micro_batch(seq)
    plan.largest_seq_len = room.largest_seq_len(t.micro_batch_size)
    return plan


# ---- the messages: the numbers above, in the config's own keys, with what to change

def _waves_note(eng: RolloutMemory, r, t) -> str:
    seqs_per_step = t.prompts_per_step * r.n_samples
    waves = math.ceil(seqs_per_step / eng.sequences)
    return (f"the KV cache holds {eng.sequences:.1f} sequences of rollout.max_model_len={r.max_model_len}; a step's "
            f"{t.prompts_per_step} prompts x {r.n_samples} samples = {seqs_per_step} sequences run in up to {waves} "
            "waves (fewer when completions stop early)")


def _generating_short(eng: RolloutMemory, lrn: LearnerMemory, r, dev: float, contexts: float, usable: float,
                      hi: float) -> str:
    need = eng.budget + contexts + lrn.resident
    return (f"generating: vLLM's rollout.gpu_memory_utilization={r.gpu_memory_utilization} x {dev:.2f} GiB = "
            f"{eng.budget / GiB:.2f} GiB plus the learner's resident {lrn.resident / GiB:.2f} GiB (weights, "
            f"LoRA, AdamW moments) and {contexts / GiB:.1f} GiB of CUDA contexts need {need / GiB:.2f} GiB of "
            f"{usable / GiB:.2f} GiB usable; lower rollout.gpu_memory_utilization to at most {hi:.2f}")


def _split_engine_short(eng: RolloutMemory, r, hi: float) -> str:
    return (f"rollout.gpu_memory_utilization={r.gpu_memory_utilization} asks {eng.budget / GiB:.2f} GiB on each of "
            f"the engine's {r.tensor_parallel_size} GPUs, which leaves no room for the CUDA context; use at most "
            f"{hi:.2f}")


def _engine_short(eng: RolloutMemory, r, dev: float, lo: float, hi: float) -> str:
    need = ", ".join(f"{eng.LABELS[k]} {getattr(eng, k) / GiB:.2f}"
                     for k in ("weights", "lora_slots", "activations", "non_torch", "cuda_graphs") if getattr(eng, k))
    if lo > hi:
        fix = (f"even {hi:.2f} is too little here: serve 4-bit weights, use rollout.tensor_parallel_size>1, "
               "or a larger GPU")
    else:
        fix = f"raise rollout.gpu_memory_utilization to at least {lo:.2f} (at most {hi:.2f} leaves the learner its room)"
    return (f"vLLM's rollout.gpu_memory_utilization={r.gpu_memory_utilization} x {dev:.2f} GiB = "
            f"{eng.budget / GiB:.2f} GiB cannot hold the engine ({need} GiB) plus one sequence of "
            f"rollout.max_model_len={r.max_model_len} in the KV cache ({eng.one_sequence / GiB:.2f} GiB); {fix}")


def _learner_short(lrn: LearnerMemory, room: LearnerRoom, mb: int, seq: int, checkpointing: bool, where: str) -> str:
    big = lrn.largest_term()
    shape = room.shape
    what = {"logits": f"micro_batch_size={mb} x {seq} tokens x vocabulary {shape.vocab:,}",
            "activations_kept": f"micro_batch_size={mb} x {seq} tokens x {shape.layers} layers"
                                + ("" if checkpointing else ", model.gradient_checkpointing=false"),
            "layer_backward": f"micro_batch_size={mb} x {seq} tokens in one recomputed layer"}.get(big, "")
    fixes = []
    best_mb = room.largest_micro_batch(seq, at_most=mb)
    if best_mb:
        fixes.append(f"set train.micro_batch_size={best_mb}")
    best_seq = room.largest_seq_len(mb, at_most=seq)
    if best_seq:
        fixes.append(f"keep it and cap sequences at {best_seq} tokens (rollout.max_model_len)")
    if not checkpointing:
        fixes.append("turn on model.gradient_checkpointing=true")
    if not fixes:
        fixes.append("use a larger GPU or model.finetune=qlora with a smaller model.lora.r")
    return (f"{where}: the learner needs {lrn.peak / GiB:.2f} GiB + {room.beside / GiB:.2f} GiB beside it, more than "
            f"the {room.usable / GiB:.2f} GiB usable; the largest term is {lrn.LABELS[big]} "
            f"{getattr(lrn, big) / GiB:.2f} GiB" + (f" ({what})" if what else "") + "; " + " or ".join(fixes))


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from config import Config, ConfigError, load

    ap = argparse.ArgumentParser(prog="python -m cluster.memory", description="Memory plan of a config on a GPU.")
    ap.add_argument("--gpu", default="rtx4080", help=f"one of {sorted(GPUS_GIB)} or the memory in GiB")
    ap.add_argument("--seq-len", type=int, default=None, help="learner tokens per sequence (default rollout.max_model_len)")
    ap.add_argument("--rollout-weights", default="none", choices=["none", "nf4"], help="how vLLM stores the base")
    ap.add_argument("overrides", nargs="*", help="config=NAME and key.sub=value")
    a = ap.parse_intermixed_args(argv)
    try:
        cfg = load(Config, "tiny-cpu", a.overrides)
        shape = ModelShape.load(cfg.model.path)
        plan = plan_memory(cfg, shape, a.gpu, seq_len=a.seq_len, rollout_weights=a.rollout_weights)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model {cfg.model.path}: {shape.params / 1e9:.3f}B parameters ({shape})")
    print(plan.report())
    return 0 if plan.fits else 1


if __name__ == "__main__":
    raise SystemExit(main())
