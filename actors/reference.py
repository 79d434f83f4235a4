"""The reference policy's logprobs, scored while the engine samples (train.reference_logprobs=stream, opt-in).

With beta > 0 a synchronous step runs a third pass over its tokens, the reference forward (2 N T FLOP, between
generation and the update). A frozen reference needs only the tokens sampled so far, so in this mode the engine sends
each row's new tokens here every ``train.reference_stream_every`` decode steps and this actor scores them on a KV
cache (learners/logprobs.py: StreamingLogprobs), at nice 19 on the learner's share of the cores while the learner
waits; what is left after generation is the last chunk. The samples come back carrying ``ref_logprobs`` and the
learner skips its own pass. Measured on 2 cores it is slower than the learner's pass (the engine and the scorer need
the same cores: bench/grpo.md), so it is not a default; it is the schedule to measure where a CPU has cores the
decode leaves idle.

The reference here is the learner's: the same frozen base (NF4 quantisation is deterministic: the same weights),
with the anchor adapter when the stage has one (model.reference_adapter, else model.adapter), at the learner's
temperature, in eval/no-grad like the learner's reference pass. The driver (pipelines/rl_loop.py: Rollouts) checks
every row's tokens against its sample; a row that does not match is left to the learner.
"""
from __future__ import annotations

import os
import uuid

import ray
import torch

from cluster import all_cores


class ReferenceScorer:
    """Keyed streams of rows (one per engine ``generate`` call): :meth:`begin`, :meth:`extend`, :meth:`close`."""

    def __init__(self, model_path: str, model_cfg, temperature: float = 1.0, num_threads: int | None = 0,
                 nice: int = 19):
        from learners.models import attach_lora, load_base, load_tokenizer

        if nice:
            os.nice(nice)  # a process may lower its own priority; it gets only what the other roles leave idle
        if num_threads is not None:
            torch.set_num_threads(num_threads or all_cores())
        model = load_base(model_path, model_cfg.finetune, model_cfg.dtype, "cpu", model_cfg.bnb_fused_cpu_kernel)
        anchor = model_cfg.reference_adapter or model_cfg.adapter
        if anchor:
            model = attach_lora(model, model_cfg.lora, anchor)
        self.model = model.eval().requires_grad_(False)
        self.temperature = temperature if temperature > 0 else 1.0  # as the learner: greedy engines score at T = 1
        self.pad_id = load_tokenizer(model_path).pad_token_id or 0
        self.streams: dict = {}

    def begin(self, key: str, prompt_ids: list[list[int]], n: int) -> None:
        from learners.logprobs import StreamingLogprobs

        s = StreamingLogprobs(self.model, self.temperature, self.pad_id)
        s.begin(prompt_ids, n)
        self.streams[key] = s

    def extend(self, key: str, new: list[list[int]]) -> None:
        self.streams[key].extend(new)

    def close(self, key: str) -> dict:
        """The stream's rows (StreamingLogprobs.result), forgotten here."""
        return self.streams.pop(key).result()


ReferenceActor = ray.remote(ReferenceScorer)


class ReferenceStream:
    """What an engine holds to stream its ``generate`` calls to a :class:`ReferenceActor`, every ``every`` decode
    steps; each call is one keyed stream. Calls from one caller run in order, so :meth:`close`'s ObjectRef resolves
    after every chunk of that stream was scored. Picklable (an actor handle and a number)."""

    def __init__(self, actor, every: int = 16):
        self.actor, self.every = actor, every  # every >= 1: checked where it enters (train.reference_stream_every)

    def begin(self, prompt_ids: list[list[int]], n: int) -> str:
        key = uuid.uuid4().hex
        self.actor.begin.remote(key, prompt_ids, n)
        return key

    def extend(self, key: str, new: list[list[int]]) -> None:
        self.actor.extend.remote(key, new)

    def close(self, key: str):
        return self.actor.close.remote(key)
