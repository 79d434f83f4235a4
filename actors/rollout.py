"""The rollout role: a vLLM engine that samples completions and hot-loads LoRA adapters by version.

`RolloutEngine` is a plain class (usable in-process, e.g. by the evaluation panel); `RolloutActor` is
the same class as a Ray actor. Every generate result carries the adapter version it sampled with, so a
trainer can prove which weights produced its data.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import ray

from cluster import actor_options, shares, torch_threads
from config.schema import RolloutConfig

log = logging.getLogger(__name__)


class RolloutEngine:
    def __init__(self, model_path: str | os.PathLike, cfg: RolloutConfig | None = None, max_lora_rank: int = 16,
                 dtype: str = "float32", enable_lora: bool = True, device: str = "cpu", num_threads: int | None = None):
        """``num_threads``: on CPU the engine's intra-op threads, 0 for every core this process may run on
        (cluster.plan.torch_threads), None to leave the process's setting; ignored on GPU."""
        cfg = cfg or RolloutConfig()
        if device == "cpu":
            # vLLM's CPU backend sizes its KV cache from this variable (GiB), not from a GPU fraction.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(cfg.kv_cache_gib)))))
            if cfg.tensor_parallel_size == 1:
                # The engine in this process (no EngineCore + worker processes): by default vLLM's CPU backend runs
                # its scheduler in one process that spin-waits (sched_yield) on a worker in another, bound to the
                # cores less one reserved for that scheduler -- on 2 cores the model ran on one core while the
                # other polled. In-process, nothing polls and the model uses the threads set below: 32 x 128 tokens
                # on `small` took 1.47 s instead of 1.95 s (bench/grpo.md). Set VLLM_ENABLE_V1_MULTIPROCESSING=1
                # to get vLLM's layout back.
                os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            if num_threads is not None:
                import torch

                from cluster import all_cores

                torch.set_num_threads(num_threads or all_cores())
        # vLLM logs five INFO lines per sleep/wake cycle, i.e. every step; VLLM_LOGGING_LEVEL=INFO brings them back.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm import LLM

        self.cfg = cfg
        self.model_path = str(model_path)
        if dtype == "auto":  # model.dtype=auto: this device's choice (bf16 where it computes in it), not the checkpoint's
            from learners.models import resolve_dtype

            dtype = resolve_dtype(dtype, device)
        self.dtype = dtype
        t0 = time.time()
        kwargs = dict(model=self.model_path, enforce_eager=cfg.enforce_eager, max_model_len=cfg.max_model_len,
                      gpu_memory_utilization=cfg.gpu_memory_utilization, seed=cfg.seed, dtype=dtype,
                      tensor_parallel_size=cfg.tensor_parallel_size, disable_log_stats=True,
                      # the identity half of the sync check reads the served LoRA slots inside the worker
                      worker_extension_cls="actors.vllm_ext.SyncExtension",
                      # sampling logprobs of the distribution actually sampled from (temperature, top-p), not of the
                      # raw logits: they are mu of the mismatch correction; prompt logprobs (the probe) stay raw
                      logprobs_mode="processed_logprobs")
        if enable_lora:
            # vLLM accepts only these bounds; a rank-4 adapter is served under the bound 8.
            allowed = (1, 8, 16, 32, 64, 128, 256, 320, 512)
            bound = next((a for a in allowed if a >= max_lora_rank), None)
            if bound is None:
                raise ValueError(f"model.lora.r={max_lora_rank} is above vLLM's largest LoRA rank (512)")
            kwargs.update(enable_lora=True, max_lora_rank=bound, max_loras=1, max_cpu_loras=2)
        if device == "cpu":
            # A prompt prefilled in chunks has its sampled token discarded, and vLLM then rewinds the request's
            # seeded generator (set_offset), which CPU generators lack: the engine died with "CPU Generator
            # does not use offset" once a step's prompts outgrew the token budget (32 prompts x 8 samples).
            # Whole prompts only: no chunk, no rewind.
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(cfg.max_model_len, 8192))
        if cfg.sleep_between_phases and device == "gpu":
            kwargs["enable_sleep_mode"] = True
        import torch

        set_threads, threads = torch.set_num_threads, torch.get_num_threads()
        cpu_log = logging.getLogger("vllm.v1.worker.cpu_worker")
        quiet = _DropMessage("torch.set_num_threads` after the thread binding")
        cpu_log.addFilter(quiet)
        try:
            self.llm = LLM(**kwargs)
        finally:
            cpu_log.removeFilter(quiet)
            # vLLM's CPU worker replaces torch.set_num_threads with a no-op that warns (it guards the thread binding
            # of its own worker process), which also skipped vLLM's own restore of the thread count after start-up;
            # in this process that binding was never made: the real function back, and the count set above.
            torch.set_num_threads = set_threads
            if device == "cpu":
                torch.set_num_threads(threads)
        self.tokenizer = self.llm.get_tokenizer()
        self.startup_s = time.time() - t0
        self.enable_lora = enable_lora
        self._lora = None  # LoRARequest of the loaded adapter
        self._merged_digest: dict | None = None  # what the worker hashed after the last merged-weight load
        self._loads = 0
        self.adapter_version = -1  # -1: the base model
        # vLLM's CPU worker accepts sleep()/wake_up() and ignores them (logging a warning each time): skip both.
        self._sleep_supported: bool | None = False if device == "cpu" else None
        self.asleep = False

    # -- adapters ---------------------------------------------------------------------------------------
    def load_adapter(self, path: str | os.PathLike, version: int) -> int:
        """Serve the PEFT adapter at ``path`` as ``version`` from the next request on."""
        from vllm.lora.request import LoRARequest

        if not self.enable_lora:
            raise RuntimeError("this engine was built with enable_lora=False")
        if not Path(path, "adapter_config.json").exists():
            raise FileNotFoundError(f"no PEFT adapter at {path} (adapter_config.json missing)")
        # A fresh int id per *load*: vLLM caches adapters by id, so reusing one (even for a re-load of the
        # same version from other files) would serve the cached, stale weights.
        self._loads += 1
        self._lora = LoRARequest(lora_name=f"v{version}-{self._loads}", lora_int_id=self._loads, lora_path=str(path))
        self.adapter_version = version
        return version

    def load_merged(self, path: str | os.PathLike, version: int) -> int:
        """Load merged weights (W_0 + s B A of every adapted layer, a safetensors file written by the learner) into
        the running engine in place and serve them as ``version``: the engine then computes with plain linear
        kernels, no LoRA path (actors/vllm_ext.py: SyncExtension.load_merged)."""
        if self.enable_lora:
            raise RuntimeError("this engine serves adapters (enable_lora=True); merged weights need enable_lora=False")
        if self.cfg.tensor_parallel_size > 1:
            raise RuntimeError("merged-weight sync loads whole matrices: it needs rollout.tensor_parallel_size=1")
        if not Path(path).is_file():
            raise FileNotFoundError(f"no merged weights at {path}")
        self._ensure_awake()
        (d,) = self.llm.collective_rpc("load_merged", args=(str(path),))
        self._merged_digest = d
        self.adapter_version = version
        return version

    def load_weights(self, exp: dict) -> int:
        """Serve what the learner exported (``{"mode": "lora" | "merged", "path", "version"}``, see
        LearnerWorker.export_adapter)."""
        if exp.get("mode", "lora") == "merged":
            return self.load_merged(exp["path"], exp["version"])
        return self.load_adapter(exp["path"], exp["version"])

    def unload_adapter(self) -> None:
        self._lora = None
        self.adapter_version = -1

    # -- sampling -----------------------------------------------------------------------------------------
    def chat_prompt(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: list, n: int = 1, max_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, stop: list[str] | None = None, seed: int | None = None,
                 reference=None) -> dict:
        """Sample ``n`` completions per prompt (a string or a list of token ids).

        Returns ``{"adapter_version", "samples": [[{text, token_ids, logprobs, finish_reason}] * n] * P,
        "prompt_token_ids": [...], "seconds", "tokens"}``; ``logprobs`` are the engine's sampling logprobs.
        ``reference`` (an actors/reference.py ReferenceStream; prompts as token ids): the new tokens go to the
        reference scorer every ``reference.every`` decode steps while sampling, and the result's ``"reference"`` is
        ``[ObjectRef]`` of its scores (same samples: tested).
        """
        from vllm import SamplingParams, TokensPrompt

        from actors.multiturn import sampled_logprobs

        c = self.cfg
        temperature = c.temperature if temperature is None else temperature
        if temperature == 0 and n > 1:
            raise ValueError("greedy decoding (temperature 0) needs n=1")
        stop = stop if stop is not None else (c.stop or None)
        # vLLM detokenizes every sequence incrementally, token by token, in Python: 40% of a demo-sized generate
        # (256 x 16 tokens on `tiny`: 0.36 -> 0.22 s raw). Only stop strings need the text while sampling; without
        # them the engine returns ids and the texts are decoded here at the end, in one batch (same text: tested).
        detokenize = bool(stop)
        kw = dict(n=n, max_tokens=max_tokens or c.max_new_tokens, temperature=temperature,
                  top_p=c.top_p if top_p is None else top_p, stop=stop, logprobs=0, detokenize=detokenize)
        # Distinct seeds for every sample: vLLM seeds sample j of a prompt with seed + j, so prompt i gets
        # seed + i * n. One seed for the batch gave sample j of every group the same random stream (and seed + i
        # per prompt the same streams shifted by one): correlated groups, and GRPO learned nothing.
        sp = SamplingParams(**kw) if seed is None else [SamplingParams(**kw, seed=seed + i * n) for i in range(len(prompts))]
        inputs = [TokensPrompt(prompt_token_ids=list(p)) if not isinstance(p, str) else p for p in prompts]
        self._ensure_awake()
        t0 = time.time()
        if reference is None:
            outs = self.llm.generate(inputs, sp, lora_request=self._lora, use_tqdm=False)
        else:
            if any(isinstance(p, str) for p in prompts):
                raise ValueError("streaming to the reference scorer needs prompts as token ids")
            outs, scored = self._generate_streaming(inputs, sp if isinstance(sp, list) else [sp] * len(inputs),
                                                    n, reference)
        # vLLM's incremental detokenizer holds back text that ends in U+FFFD (bytes of a character not yet complete)
        # and never flushes it when the sequence ends: the batch decode drops the same tail.
        texts = None if detokenize else iter(t.rstrip("\ufffd") for t in self.tokenizer.batch_decode(
            [list(s.token_ids) for o in outs for s in o.outputs], skip_special_tokens=True))
        samples, ntok = [], 0
        for o in outs:
            group = []
            for s in o.outputs:
                group.append({"text": s.text if texts is None else next(texts), "token_ids": list(s.token_ids),
                              "logprobs": sampled_logprobs(s), "finish_reason": s.finish_reason,
                              "version": self.adapter_version})
                ntok += len(s.token_ids)
            samples.append(group)
        out = {"adapter_version": self.adapter_version, "samples": samples,
               "prompt_token_ids": [list(o.prompt_token_ids) for o in outs], "seconds": time.time() - t0, "tokens": ntok}
        if reference is not None:
            out["reference"] = [scored]
        return out

    def _generate_streaming(self, inputs: list, params: list, n: int, reference):
        """``LLM.generate``'s loop (vLLM's LLM._run_engine) with the requests in DELTA mode: every
        ``reference.every`` engine steps each row's new tokens go to the reference scorer. Returns outputs shaped as
        ``LLM.generate``'s (per prompt ``.prompt_token_ids`` and ``.outputs`` in sample order, each with
        ``token_ids``, ``text``, ``logprobs``, ``finish_reason``) and the scorer's ObjectRef."""
        from types import SimpleNamespace

        from vllm.sampling_params import RequestOutputKind

        eng = self.llm.llm_engine
        tag = f"ref{time.monotonic_ns()}-"
        outs = []
        for i, (inp, p) in enumerate(zip(inputs, params)):
            p = p.clone()
            p.output_kind = RequestOutputKind.DELTA
            eng.add_request(f"{tag}{i}", inp, p, lora_request=self._lora)
            outs.append(SimpleNamespace(prompt_token_ids=list(inp["prompt_token_ids"]), outputs=[
                SimpleNamespace(token_ids=[], text="", logprobs=[], finish_reason=None) for _ in range(n)]))
        key = reference.begin([o.prompt_token_ids for o in outs], n)
        sent = [0] * (len(outs) * n)
        rows = [s for o in outs for s in o.outputs]

        def flush():
            new = [r.token_ids[k:] for r, k in zip(rows, sent)]
            if any(new):
                reference.extend(key, new)
                for j, t in enumerate(new):
                    sent[j] += len(t)

        steps = 0
        while eng.has_unfinished_requests():
            for o in eng.step():
                dst = outs[int(o.request_id[len(tag):])]
                for c in o.outputs:
                    r = dst.outputs[c.index]
                    r.token_ids.extend(c.token_ids)
                    r.text += c.text
                    r.logprobs.extend(c.logprobs or [])
                    r.finish_reason = c.finish_reason or r.finish_reason
            steps += 1
            if steps % reference.every == 0:
                flush()
        flush()
        return outs, reference.close(key)

    def generate_episodes(self, rows: list[dict], env_cfg, n: int = 1, max_tokens: int | None = None,
                          temperature: float | None = None, top_p: float | None = None, seed: int | None = None) -> dict:
        """Multi-turn, tool-using trajectories for ``rows`` (``n`` each) in the environment ``env_cfg`` names
        (actors/multiturn.py): token ids in and out, tool results appended as tokens, every trajectory's next turn in
        one batched call. ``max_tokens`` caps one turn (env_cfg.max_tokens the whole trajectory). Same result shape
        as :meth:`generate`, each sample with its ``loss_mask`` and tool-use counts."""
        from actors.multiturn import run_episodes

        c = self.cfg
        temperature = c.temperature if temperature is None else temperature
        self._ensure_awake()
        t0 = time.time()
        out = run_episodes(self.llm, self.tokenizer, rows, n, env_cfg,
                           {"max_tokens": max_tokens or c.max_new_tokens, "temperature": temperature,
                            "top_p": c.top_p if top_p is None else top_p}, seed, self.adapter_version, self._lora)
        return {**out, "seconds": time.time() - t0}

    def prompt_logprobs(self, token_ids: list[list[int]]) -> dict:
        """log p(x_t | x_<t) for t = 1..L-1 of each sequence under the served weights (the sync probe).

        Returns ``{"adapter_version", "logprobs": [[...]], "digest"}``. Exact tokens in, so the learner can score
        the very same ids. ``digest`` (with an adapter loaded) is what the engine's worker reads back from the LoRA
        slot that served the probe (actors/vllm_ext.py); None where it cannot be read (tensor-parallel shards).
        """
        from vllm import SamplingParams, TokensPrompt

        self._ensure_awake()
        sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)  # numbers only
        # With LoRA enabled, one request per call: vLLM 0.32's CPU LoRA logits path mis-sizes its index tensor when several
        # requests ask for prompt logprobs in one batch (einsum shape error that kills the engine).
        batches = [[ids] for ids in token_ids] if self.enable_lora else [token_ids]
        outs = [o for b in batches for o in self.llm.generate([TokensPrompt(prompt_token_ids=list(ids)) for ids in b],
                                                               sp, lora_request=self._lora, use_tqdm=False)]
        res = []
        for ids, o in zip(token_ids, outs):
            pl = o.prompt_logprobs or []
            res.append([pl[i][ids[i]].logprob for i in range(1, len(ids))])
        return {"adapter_version": self.adapter_version, "logprobs": res, "digest": self.adapter_digest()}

    def adapter_digest(self) -> dict | None:
        """Per-module hashes of the adapter weights the engine computes with (after a request used them); with
        merged weights, those the worker hashed from its layers after the load."""
        if not self.enable_lora:
            return self._merged_digest
        if self._lora is None or self.cfg.tensor_parallel_size > 1:
            return None  # each tensor-parallel worker holds a shard; the probe still checks the effect
        (d,) = self.llm.collective_rpc("lora_digest", args=(self._lora.lora_int_id,))
        return d

    # -- colocate mode: free the device while the learner steps ------------------------------------------
    def sleep(self) -> bool:
        """Release weights/KV cache memory (vLLM sleep mode). Returns False where the backend cannot."""
        if self._sleep_supported is False or self.asleep:
            return bool(self.asleep)
        try:
            self.llm.sleep(level=1)
            self._sleep_supported, self.asleep = True, True
        except Exception as e:  # CPU builds and some versions have no sleep mode
            self._sleep_supported = False
            log.warning("vLLM sleep mode is not available on this backend (%s); the engine stays resident", e)
        return self.asleep

    def _ensure_awake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def info(self) -> dict:
        import torch

        return {"model_path": self.model_path, "adapter_version": self.adapter_version, "startup_s": self.startup_s,
                "sleep_supported": self._sleep_supported, "torch_threads": torch.get_num_threads()}

    def shutdown(self) -> None:
        import gc

        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            del llm
            gc.collect()


class _DropMessage(logging.Filter):
    """Drops log records whose message contains ``text`` (vLLM's CPU worker warns, once per skipped call, that an
    in-process engine's start-up tried to set the thread count)."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


RolloutActor = ray.remote(RolloutEngine)


@ray.remote(num_cpus=0)
def _merge_generations(*parts: dict) -> dict:
    """One ``generate`` result from the engines' shares, prompts in their original order."""
    return {"adapter_version": min(p["adapter_version"] for p in parts),
            "samples": [g for p in parts for g in p["samples"]],
            "prompt_token_ids": [x for p in parts for x in p["prompt_token_ids"]],
            "seconds": max(p["seconds"] for p in parts), "tokens": sum(p["tokens"] for p in parts),
            **({"reference": [r for p in parts for r in p["reference"]]} if "reference" in parts[0] else {})}


class EnginePool:
    """``cluster.rollout.count`` engines used as one by a pipeline: :meth:`generate` gives each a contiguous
    share of the prompts (seeds offset so that every sample keeps its own stream, as on one engine) and returns
    one ObjectRef of the merged result; ``actors`` are the engines, which actors/sync.py's SyncVerifier loads and
    checks one by one."""

    def __init__(self, plan, pg, model_path: str, cfg: RolloutConfig, concurrent: bool = False, **engine_kwargs):
        """``concurrent``: the engines generate while another role computes (the learner with train.max_staleness > 0,
        the reference scorer with train.reference_logprobs=stream), so on a CPU each keeps its own share of the cores
        (cluster.plan.torch_threads)."""
        self.actors = [RolloutActor.options(**actor_options(plan, pg, "rollout", p.index)).remote(
            model_path, cfg, **engine_kwargs, num_threads=torch_threads(plan, "rollout", p.index, concurrent))
            for p in plan.of("rollout")]

    def generate(self, prompts: list, n: int = 1, seed: int | None = None, **kw):
        if len(self.actors) == 1:
            return self.actors[0].generate.remote(prompts, n=n, seed=seed, **kw)
        refs = [a.generate.remote(prompts[lo:hi], n=n, seed=None if seed is None else seed + lo * n, **kw)
                for a, (lo, hi) in zip(self.actors, shares(len(prompts), len(self.actors)))]
        return _merge_generations.remote(*refs)

    def generate_episodes(self, rows: list[dict], env_cfg, n: int = 1, seed: int | None = None, **kw):
        """:meth:`RolloutEngine.generate_episodes` over the engines, rows shared out as :meth:`generate` shares
        prompts (each trajectory keeps its seed)."""
        if len(self.actors) == 1:
            return self.actors[0].generate_episodes.remote(rows, env_cfg, n=n, seed=seed, **kw)
        refs = [a.generate_episodes.remote(rows[lo:hi], env_cfg, n=n, seed=None if seed is None else seed + lo * n, **kw)
                for a, (lo, hi) in zip(self.actors, shares(len(rows), len(self.actors)))]
        return _merge_generations.remote(*refs)

    def sleep(self) -> None:
        for a in self.actors:
            a.sleep.remote()
