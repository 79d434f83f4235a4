"""The policy's linear weights with the LoRA adapter merged in, for engines that serve merged weights.

For every LoRA-wrapped linear layer (adapter ``default``):

    W' = W_0 + s * B @ A,      s = alpha / r   (alpha / sqrt(r) with rsLoRA)

where W_0 is the base weight the learner computes with (dequantised, W_0 = dequant(quant(W)), for a 4-bit base,
the same weights ``export_engine_base`` wrote for the engine) and A [r, in], B [out, r] are the adapter's
matrices. x W'^T = x W_0^T + s (x A^T) B^T is the learner's forward up to float rounding.

Engines pack some projections into one matrix (vLLM: q/k/v -> qkv_proj, gate/up -> gate_up_proj) and rebuild a
packed matrix from all its parts, so a part the adapter does not touch is sent too (as its W_0).
"""
from __future__ import annotations

import torch

# vLLM's packed_modules_mapping of the Llama/Qwen families: the engine needs every part of a packed matrix.
PACKED_PARTS: dict[str, tuple[str, ...]] = {"qkv_proj": ("q_proj", "k_proj", "v_proj"),
                                            "gate_up_proj": ("gate_proj", "up_proj")}
_PACKED_OF = {part: parts for parts in PACKED_PARTS.values() for part in parts}


def base_weight(layer) -> torch.Tensor:
    """W_0 of a linear layer in fp32: a bitsandbytes 4-bit layer dequantised, a plain one as it is."""
    w = layer.weight
    if getattr(w, "quant_state", None) is not None:
        import bitsandbytes as bnb

        return bnb.functional.dequantize_4bit(w.data, w.quant_state).to(torch.float32)
    return w.detach().to(torch.float32)


def lora_scaling(layer, adapter: str = "default") -> float:
    return float(layer.scaling[adapter])


def merged_weights(model, cache: dict[str, torch.Tensor] | None = None, adapter: str = "default") -> dict[str, torch.Tensor]:
    """{transformers weight name ('model.layers.0.self_attn.q_proj.weight'): W' in fp32} for every linear layer the
    adapter wraps, plus the untouched parts of packed matrices (their W_0). ``cache`` keeps the W_0 between calls
    (dequantising costs more than the merge); pass the same dict every time."""
    cache = {} if cache is None else cache
    prefix = "base_model.model."
    loras = {name.removeprefix(prefix): m for name, m in model.named_modules()
             if hasattr(m, "lora_A") and adapter in getattr(m, "lora_A", {})}
    if not loras:
        raise ValueError("merged_weights needs a LoRA model (no layer holds adapter 'default')")
    names = set(loras)
    for name in list(loras):
        parent, _, leaf = name.rpartition(".")
        names.update(f"{parent}.{p}" for p in _PACKED_OF.get(leaf, ()))
    root = model.get_submodule(prefix.rstrip(".")) if hasattr(model, "base_model") else model
    out = {}
    for name in sorted(names):
        layer = loras.get(name)
        if layer is not None and getattr(layer, "use_dora", {}).get(adapter, False):
            raise ValueError(f"{name}: DoRA adapters cannot be merged here; use rollout.weight_sync=lora")
        base_layer = layer.base_layer if layer is not None else root.get_submodule(name)
        if name not in cache:
            cache[name] = base_weight(base_layer)
        w = cache[name]
        if layer is not None:
            a = layer.lora_A[adapter].weight.detach().to(torch.float32)
            b = layer.lora_B[adapter].weight.detach().to(torch.float32)
            w = torch.addmm(w, b, a, alpha=lora_scaling(layer, adapter))
        out[f"{name}.weight"] = w
    return out
