"""Build tiny Qwen3-architecture causal LMs with a locally trained byte-level BPE tokenizer.

The folder written loads in transformers, vLLM (CPU build too), peft and bitsandbytes 4-bit.
``head_dim`` is 64 in every preset: vLLM's CPU attention has no kernel for smaller heads.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tinymodels.corpus import corpus

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML, with {% generation %} marks around assistant content so that
# `apply_chat_template(..., return_assistant_tokens_mask=True)` derives the assistant-only loss mask
# from the template itself. Tools as Qwen3 renders them (see envs/), more tersely, for tiny models:
# - `tools=[...]` (OpenAI function definitions): a system block first, merged into the first system message if any,
#   one line per tool, its name and parameters: "# Tools\ncalculator(expression)". Qwen3 writes each tool's whole
#   JSON schema there; at 512 positions and a 512-token vocabulary that was 264 of a 300-token prompt, so the tiny
#   models see the names only (the warm start teaches them the call format);
# - an assistant message's OpenAI `tool_calls`: `<tool_call>\n{"name":...,"arguments":...}\n</tool_call>` blocks
#   after its content (compact JSON, as envs.tool_calls.format_tool_call writes them), inside the generation marks;
# - consecutive `tool` messages: one user turn of `\n<tool_response>\n{content}\n</tool_response>` parts.
# Chats without tools render byte for byte as the plain ChatML template did (tests/test_envs.py checks it).
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools' }}"
    "{%- for tool in tools %}{%- set f = tool['function'] if tool['function'] is defined else tool %}"
    "{%- set props = f['parameters']['properties'] if f['parameters'] is defined and f['parameters']['properties'] is defined else {} %}"
    "{{- '\\n' + f['name'] + '(' + (props | list | join(',')) + ')' }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if tools and loop.first and message['role'] == 'system' %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}"
    "{%- set content = message['content'] if message['content'] is string else '' %}{{- content }}"
    "{%- for call in message['tool_calls'] or [] %}"
    "{%- if content or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{%- set call = call['function'] if call['function'] is defined else call %}"
    "{{- '<tool_call>\\n{\"name\":' + (call['name'] | tojson) + ',\"arguments\":' }}"
    "{%- if call['arguments'] is string %}{{- call['arguments'] }}"
    "{%- else %}{{- call['arguments'] | tojson(separators=(',', ':')) }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class Preset:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    head_dim: int = 64


PRESETS: dict[str, Preset] = {
    # ~0.36M parameters: unit tests.
    "tiny": Preset(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, intermediate_size=256),
    # ~3.4M parameters: end-to-end tests and short learning runs.
    "mini": Preset(vocab_size=1024, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=768),
    # ~25M parameters: the demo and benchmarks.
    "small": Preset(vocab_size=2048, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                    num_key_value_heads=4, intermediate_size=1536),
}


def _train_tokenizer(vocab_size: int, seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2,
    )
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    return tok


def build_tiny_model(out_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0) -> Path:
    """Write a tiny Qwen3 model + tokenizer to ``out_dir`` deterministically from ``seed``."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    if preset not in PRESETS:
        raise ValueError(f"unknown tiny-model preset {preset!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    raw = _train_tokenizer(p.vocab_size, seed)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, additional_special_tokens=["<|im_start|>"], model_max_length=p.max_position_embeddings,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    vocab = len(tokenizer)

    cfg = Qwen3Config(
        vocab_size=vocab, hidden_size=p.hidden_size, intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_hidden_layers, num_attention_heads=p.num_attention_heads,
        num_key_value_heads=p.num_key_value_heads, head_dim=p.head_dim,
        max_position_embeddings=p.max_position_embeddings, tie_word_embeddings=True,
        rms_norm_eps=1e-6, rope_theta=10000.0, torch_dtype="float32",
        bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "tiny_model.json").write_text(json.dumps({"preset": preset, "seed": seed, **asdict(p),
                                                      "parameters": sum(t.numel() for t in model.parameters())}))
    return out


def ensure_tiny_model(cache_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0) -> Path:
    """Build the model once into ``cache_dir`` and reuse it (atomic: a half-built folder is never seen)."""
    key = hashlib.sha1(json.dumps([preset, seed, asdict(PRESETS[preset]), CHAT_TEMPLATE]).encode()).hexdigest()[:10]
    final = Path(cache_dir).resolve() / "models" / f"{preset}-s{seed}-{key}"
    if (final / "tiny_model.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        build_tiny_model(tmp, preset, seed)
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race; theirs is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out_dir")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(build_tiny_model(a.out_dir, a.preset, a.seed))
