"""Load a causal LM for training: 4-bit NF4 base + LoRA (QLoRA), bf16/fp32 base + LoRA, or full.

QLoRA: Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs". The reference policy of
a LoRA learner is the same base with the adapter switched off (``reference_mode``): no second copy.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import torch

from config import ConfigError

class _Dtypes(dict):
    """torch dtypes by ``model.dtype`` name; ``auto`` (or a bad name) goes through :func:`resolve_dtype` for this
    process's default device -- callers that know their device call resolve_dtype(name, device) first."""

    def __missing__(self, name: str) -> torch.dtype:
        return self[resolve_dtype(name)]


DTYPES = _Dtypes(float32=torch.float32, bfloat16=torch.bfloat16, float16=torch.float16)

# /proc/cpuinfo flags that mean bf16 arithmetic in hardware (AVX512-BF16 dot products, AMX bf16 tiles)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel reports (the ``flags`` line of /proc/cpuinfo); empty where there is none."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def resolve_dtype(name: str, device: str | None = None, flags: set[str] | None = None) -> str:
    """``model.dtype`` as the name of a concrete dtype: ``auto`` is ``bfloat16`` where the hardware computes in it
    (every CUDA device; a CPU whose ``flags`` -- by default this machine's, from /proc/cpuinfo -- include
    avx512_bf16 or amx_bf16) and ``float32`` elsewhere (on a CPU without them bf16 is emulated and slower); any
    other name is returned as it is. ``device``: cuda[:N] or cpu; None means cuda where torch sees one."""
    if name != "auto":
        if name not in DTYPES:
            raise ConfigError(f"model.dtype must be auto, {', '.join(DTYPES)}; got {name!r}")
        return name
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda"):
        return "bfloat16"
    flags = cpu_flags() if flags is None else flags
    return "bfloat16" if any(f in flags for f in CPU_BF16_FLAGS) else "float32"


def load_tokenizer(model_path: str | os.PathLike):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(model_path: str | os.PathLike, finetune: str = "qlora", lora=None, dtype: str = "float32",
                adapter_path: str | os.PathLike | None = None, gradient_checkpointing: bool = False,
                device: str | None = None, fused_4bit_cpu: bool = False):
    """Return ``(model, tokenizer)`` ready to train.

    ``finetune``: ``qlora`` (NF4 4-bit frozen base, double quantisation, LoRA on top), ``lora`` (frozen
    base in ``dtype`` + LoRA) or ``full``. ``lora`` is a :class:`config.LoraConfig` (or None for its
    defaults). ``adapter_path`` resumes a saved PEFT adapter instead of a fresh one. ``fused_4bit_cpu``:
    see :func:`select_4bit_kernel` (off: every forward of the model takes the same kernel). ``dtype`` (see
    :func:`resolve_dtype`) is the compute dtype of the frozen base; LoRA weights, their gradients and the
    optimizer state stay fp32 whatever it is (peft keeps adapters in fp32 and casts their input).
    """
    model = load_base(model_path, finetune, dtype, device, fused_4bit_cpu)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if finetune in ("qlora", "lora"):
        model = attach_lora(model, lora, adapter_path)
    return model, load_tokenizer(model_path)


def load_base(model_path: str | os.PathLike, finetune: str = "qlora", dtype: str = "float32",
              device: str | None = None, fused_4bit_cpu: bool = False):
    """The base model as :func:`load_policy` loads it for ``finetune`` (NF4 4-bit for qlora, ``dtype`` otherwise),
    without an adapter: the same frozen weights, bit for bit (NF4 quantisation is deterministic)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if finetune not in ("qlora", "lora", "full"):
        raise ValueError(f"model.finetune must be qlora, lora or full, got {finetune!r}")
    if not Path(model_path, "config.json").exists():
        raise FileNotFoundError(f"no model at {model_path} (expected a transformers folder with config.json)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = DTYPES[resolve_dtype(dtype, device)]
    kwargs: dict = {"dtype": torch_dtype}
    if finetune == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype, bnb_4bit_quant_storage=torch.uint8,
        )
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(str(model_path), **kwargs)
    select_4bit_kernel(model, fused_4bit_cpu)
    if finetune != "qlora":
        model.to(device)
    model.config.use_cache = False
    return model


def select_4bit_kernel(model, fused: bool = False) -> int:
    """Pick one bitsandbytes kernel for every forward of ``model``'s 4-bit layers; returns how many layers.

    bitsandbytes 0.50's ``Linear4bit.forward`` takes a fused bf16 kernel on CPUs with AVX512-BF16 whenever the
    module is in eval mode and its input needs no grad (it repacks the 4-bit weight in place on first use), and
    the fp32 dequantise-then-matmul path otherwise. A learner's no-grad forwards (reference, old-logprob, sync
    probe) then compute a different function from its training forward -- about 1e-3 per token -- so the
    reference is not the base it claims to be and the ratio pi_theta / pi_old is not 1 at the start, on some
    machines and not on others. ``fused=False`` (the default everywhere) turns the fused path off, so every
    forward takes the dequantise path on every machine; ``fused=True`` leaves bitsandbytes' own choice (the
    fused kernel where the CPU has it): faster no-grad forwards, at the cost of that self-disagreement.
    """
    n = 0
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):  # bitsandbytes.nn.Linear4bit (and its subclasses)
            if fused:
                from bitsandbytes.functional import has_avx512bf16

                m.support_avx512bf16_for_cpu = has_avx512bf16()
            else:
                m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def attach_lora(model, lora=None, adapter_path: str | os.PathLike | None = None):
    """Wrap ``model`` with a trainable LoRA adapter (fresh from ``lora`` or loaded from ``adapter_path``)."""
    from peft import LoraConfig as PeftLoraConfig, PeftModel, get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    if adapter_path:
        _require_adapter(adapter_path, "model.adapter and dpo.sft_adapter")
        return PeftModel.from_pretrained(model, str(adapter_path), is_trainable=True)
    if lora is None:
        from config import LoraConfig

        lora = LoraConfig()
    cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                         target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class AdapterNotFound(ConfigError, FileNotFoundError):
    """A config key names a folder that holds no PEFT adapter."""


def _require_adapter(path: str | os.PathLike, keys: str) -> None:
    if not Path(path, "adapter_config.json").exists():
        raise AdapterNotFound(f"no PEFT adapter at {path} ({keys}: a folder with adapter_config.json, "
                              "e.g. a stage's adapters/vNNNNNN)")


def lora_rank(cfg_model) -> int:
    """The largest LoRA rank a run serves: ``model.lora.r``, or the saved adapter's own when it starts from one.
    The driver calls it before any actor starts, so a ``model.adapter`` or ``model.reference_adapter`` that
    names no adapter is reported there, as the user's config."""
    if cfg_model.reference_adapter:
        _require_adapter(cfg_model.reference_adapter, "model.reference_adapter")
    r = cfg_model.lora.r
    if cfg_model.adapter:
        _require_adapter(cfg_model.adapter, "model.adapter")
        r = max(r, int(json.loads(Path(cfg_model.adapter, "adapter_config.json").read_text()).get("r", r)))
    return r


REFERENCE_ADAPTER = "ref"


def add_reference_adapter(model, adapter_path: str | os.PathLike | None = None) -> None:
    """Freeze an adapter as the reference policy under the name ``ref``: the saved adapter at ``adapter_path``
    (e.g. the SFT adapter when RL starts from a DPO adapter), or else a copy of the adapter being trained
    (when the run starts from a saved adapter, the model it starts from is the anchor, as TRL does it)."""
    if not is_lora(model):
        raise ValueError("a reference adapter needs a LoRA model (model.finetune=qlora or lora)")
    if adapter_path:
        _require_adapter(adapter_path, "model.reference_adapter")
        model.load_adapter(str(adapter_path), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    else:
        model.add_adapter(REFERENCE_ADAPTER, model.peft_config["default"])
        for name, p in model.named_parameters():
            if ".default." in name:
                model.get_parameter(name.replace(".default.", f".{REFERENCE_ADAPTER}.")).data.copy_(p.data)
    for name, p in model.named_parameters():
        if f".{REFERENCE_ADAPTER}." in name:
            p.requires_grad_(False)


@contextlib.contextmanager
def reference_mode(model) -> Iterator[None]:
    """Run ``model`` as the reference policy: the frozen ``ref`` adapter if the model has one
    (``add_reference_adapter``), else the same base with the LoRA adapter switched off (no second copy)."""
    if not is_lora(model):
        raise ValueError("reference_mode needs a LoRA model; a full fine-tune keeps a separate reference copy")
    if REFERENCE_ADAPTER not in model.peft_config:
        with model.disable_adapter():
            yield
        return
    prev = model.active_adapter
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.set_adapter(REFERENCE_ADAPTER)
    try:
        yield
    finally:
        model.set_adapter(prev)  # peft's set_adapter flips requires_grad: restore exactly what trained before
        for p in model.parameters():
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def save_adapter(model, out_dir: str | os.PathLike) -> Path:
    """Save the adapter in PEFT format (loadable by peft and by vLLM's LoRARequest); full models save whole."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_lora(model):  # only the trained adapter: a frozen reference adapter stays with the learner
        model.save_pretrained(str(out), safe_serialization=True, selected_adapters=["default"])
    else:
        model.save_pretrained(str(out), safe_serialization=True)
    return out


def export_engine_base(model_path: str | os.PathLike, model, out_dir: str | os.PathLike) -> Path:
    """Write the base weights the rollout engine should serve so that it sees the learner's model.

    A QLoRA learner computes with NF4-quantised weights; an engine serving the original bf16/fp32
    weights would sample from a slightly different policy (the quantisation error). Here every 4-bit
    linear layer is dequantised (W' = dequant(quant(W))) and written into a plain transformers folder,
    so that engine and learner agree to float rounding and the sync probe can use a tight tolerance.
    For LoRA/full learners the base is the original folder and is returned as it is.
    """
    import shutil

    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    quantized = {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    if not quantized:
        return Path(model_path)
    plain = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    for name, m in quantized.items():
        # peft wraps layers: ...q_proj.base_layer is the Linear4bit; the plain model's name drops the prefixes.
        plain_name = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        w = bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state).to(torch.float32)
        target = plain.get_submodule(plain_name)
        if target.weight.shape != w.shape:
            raise RuntimeError(f"dequantised {name} has shape {tuple(w.shape)}, base has {tuple(target.weight.shape)}")
        target.weight.data.copy_(w)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(str(out), safe_serialization=True)
    for f in Path(model_path).iterdir():
        if f.is_file() and ("token" in f.name or f.name in ("chat_template.jinja", "generation_config.json")):
            shutil.copy(f, out / f.name)
    return out


DERIVED_STAMP = "derived_from.json"


def source_stamp(*folders: str | os.PathLike) -> list:
    """What a derived model folder (a merged model, a dequantised base) is made from: each source folder's
    resolved path with the size and mtime of its weight and config files. Cheap at any model size (no hashing);
    any rewrite of a source changes it."""
    out = []
    for folder in folders:
        p = Path(folder).resolve()
        files = sorted(q for q in p.iterdir() if q.is_file() and (q.suffix == ".safetensors" or q.name.endswith("config.json")))
        out.append([str(p), [[q.name, q.stat().st_size, q.stat().st_mtime_ns] for q in files]])
    return out


def derived_is_current(out_dir: str | os.PathLike, stamp: list) -> bool:
    """True when ``out_dir`` holds a model made from exactly the sources ``stamp`` describes (see
    :func:`mark_derived`): only then may a rerun reuse it instead of a stale one from an earlier run."""
    s = Path(out_dir, DERIVED_STAMP)
    return Path(out_dir, "config.json").exists() and s.exists() and json.loads(s.read_text()) == stamp


def mark_derived(out_dir: str | os.PathLike, stamp: list) -> None:
    Path(out_dir, DERIVED_STAMP).write_text(json.dumps(stamp, indent=1))
