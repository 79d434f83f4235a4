"""Code that runs inside vLLM's worker processes (``worker_extension_cls``), reached with ``LLM.collective_rpc``.

The identity half of the sync check: the worker reads the LoRA weights out of the slot buffers its kernels
compute with -- not a version number the driver told it, not the files it was pointed at -- and hashes them in
the canonical form that :func:`canonical_lora` gives the learner's exported adapter. Kept free of the project's
other modules (torch and xxhash only) so that vLLM's spawned engine process can import it on its own.
"""
from __future__ import annotations

import torch
import xxhash


def tensor_digest(*tensors: torch.Tensor) -> str:
    """XXH3-128 over each tensor's dtype, shape and bytes (contiguous, on the CPU).

    The digest tells the learner's weights from stale or mis-loaded ones (a bug, not an adversary), so a fast
    non-cryptographic hash does: 50 MB of merged `small` weights hash in a few ms where sha256 took 26 ms on each
    side of every sync. The bytes are hashed in place (a buffer view), not copied."""
    h = xxhash.xxh3_128()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.view(torch.uint8).reshape(-1).numpy())
    return h.hexdigest()


def canonical_lora(lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, dtype: torch.dtype):
    """(A, s * B) as a vLLM engine of ``dtype`` holds them: A [r, in] and B [out, r] cast to ``dtype``, then B scaled
    by s = alpha / r in that dtype (vLLM's LoRALayerWeights.optimize), so both sides do the same float operations."""
    a, b = lora_a.to(dtype), lora_b.to(dtype)
    if scaling != 1:
        b = b * scaling
    return a, b


class SyncExtension:
    """Mixed into vLLM's worker class (``LLM(worker_extension_cls="actors.vllm_ext.SyncExtension")``)."""

    def load_merged(self, path: str) -> dict:
        """Load merged linear weights (learners/merge.py, a safetensors file of transformers names) into the running
        model in place, no restart, and hash what the layers now hold: ``{"dtype", "modules": {weight name: digest}}``.

        Parts of a packed matrix (q/k/v -> qkv_proj, gate/up -> gate_up_proj) are concatenated in the model's
        ``packed_modules_mapping`` order, the layout vLLM's weight loaders build at start-up (one tensor-parallel
        rank: the verifier refuses merged sync with shards). On CPU a linear layer computes with a prepacked copy
        (oneDNN / sgl kernels) made from its weight at load time, so the layer gets the new weight and its kernel is
        packed again from it; on GPU the weight is copied into the parameter the kernels read."""
        from safetensors.torch import load_file

        model = self.model_runner.model
        tensors = load_file(path)
        packed = getattr(model, "packed_modules_mapping", {})
        part_of = {p: (k, i) for k, parts in packed.items() for i, p in enumerate(parts)}
        groups: dict[str, dict[int, tuple[str, torch.Tensor]]] = {}
        for key, t in tensors.items():
            mod = key.removesuffix(".weight")
            parent, _, leaf = mod.rpartition(".")
            target, idx = part_of.get(leaf, (leaf, 0))
            groups.setdefault(f"{parent}.{target}", {})[idx] = (key, t)
        out, dtype = {}, None
        for name, parts in sorted(groups.items()):
            layer = model.get_submodule(name)
            leaf = name.rpartition(".")[2]
            want = len(packed.get(leaf, [leaf]))
            if sorted(parts) != list(range(want)):
                raise ValueError(f"{name}: merged weights hold parts {sorted(parts)} of {want}; send every part")
            dtype = layer.weight.dtype  # (an emptied weight keeps its dtype)
            w = torch.cat([parts[i][1] for i in range(want)], 0).to(dtype)
            if w.device.type == "cpu" and hasattr(layer, "cpu_linear"):
                from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

                layer.weight = torch.nn.Parameter(w, requires_grad=False)
                dispatch_cpu_unquantized_gemm(layer, remove_weight=False)  # keep the weight: it is what we hash
            else:
                if layer.weight.shape != w.shape:
                    raise ValueError(f"{name}: weight {tuple(layer.weight.shape)}, merged {tuple(w.shape)}")
                layer.weight.data.copy_(w.to(layer.weight.device))
            held, row = layer.weight, 0
            for i in range(want):
                key, t = parts[i]
                out[key] = tensor_digest(held[row:row + t.shape[0]])
                row += t.shape[0]
        return {"dtype": str(dtype).replace("torch.", ""), "modules": out}

    def lora_digest(self, lora_int_id: int) -> dict:
        """Per-module digests of the LoRA weights in the slot that serves ``lora_int_id``:
        ``{"dtype", "rank", "modules": {hf_module_name: digest}}``, or ``{"error": ...}`` when that adapter is not
        in a slot. Names are the transformers/PEFT module names (a packed qkv_proj is reported as its q/k/v parts)."""
        runner = self.model_runner
        manager = getattr(getattr(runner, "lora_manager", None), "_adapter_manager", None)
        if manager is None:
            return {"error": "this engine was built without LoRA"}
        if lora_int_id not in manager.lora_index_to_id:
            return {"error": f"adapter id {lora_int_id} is in no LoRA slot (slots hold {manager.lora_index_to_id})"}
        index = manager.lora_index_to_id.index(lora_int_id)
        rank = manager._registered_adapters[lora_int_id].rank
        packed = manager.packed_modules_mapping
        out, dtype = {}, None
        for name, module in sorted(manager.modules.items()):
            a_stk, b_stk = getattr(module, "lora_a_stacked", None), getattr(module, "lora_b_stacked", None)
            if not isinstance(a_stk, (tuple, list)) or not isinstance(b_stk, (tuple, list)):
                continue  # embeddings / logits processors: not a target of this project's adapters
            parent, _, leaf = name.rpartition(".")
            subs = packed.get(leaf, [leaf]) if len(a_stk) > 1 else [leaf]
            for sub, a_s, b_s in zip(subs, a_stk, b_stk):
                a = a_s[index, 0, :rank, :]
                b = b_s[index, 0, :, :rank]
                if not (a.any() or b.any()):
                    continue  # a module the adapter does not touch: its slot is zeroed
                dtype = str(a.dtype).replace("torch.", "")
                out[f"{parent}.{sub}" if parent else sub] = tensor_digest(a, b)
        return {"dtype": dtype, "rank": rank, "modules": out}
