"""The sections every stage shares: run, cluster plan, model, rollout, reward, algorithm, training, data,
checkpoints. Each field's docstring is the string right below it.

Stage-specific sections (sft, dpo, rm, eval, continual) live in their own modules next to this one and
hang off :class:`Config`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from config.continual import ContinualConfig
from config.envs import EnvConfig
from config.evaluation import EvalConfig
from config.loader import check
from config.preference import DPOConfig, RMConfig
from config.sft import SFTConfig


@dataclass
class RoleResources:
    """What one role (rollout, reward, learner) asks of the cluster."""

    count: int = 1
    """How many actors of this role (engines, scorer pools, data-parallel learners)."""
    num_cpus: float = 0.5
    """CPUs per actor. Fractions let a 2-core machine hold every role."""
    num_gpus: float = 0.0
    """GPUs per actor. In colocate mode the roles' fractions share one card (must sum to <= 1)."""
    memory_gib: float = 0.0
    """Host memory reserved per actor (0 = no reservation)."""
    timeout_s: float = 900.0
    """Deadline of one call to an actor of this role inside an RL step (generate, score, update, sync); past it the
    run stops with an error naming the role (a stopped or hung actor never hangs the driver)."""

    def __post_init__(self):
        check(self.count >= 1, "count", f"must be at least 1, got {self.count}")
        check(self.num_cpus >= 0, "num_cpus", f"must be >= 0, got {self.num_cpus}")
        check(self.num_gpus >= 0, "num_gpus", f"must be >= 0, got {self.num_gpus}")
        check(self.timeout_s > 0, "timeout_s", f"must be > 0 seconds, got {self.timeout_s}")


@dataclass
class ClusterConfig:
    """Where the job runs and how roles map to placement-group bundles."""

    address: str = "local"
    """'local' starts an in-process Ray cluster; 'auto' joins the one started with `ray start` on this node;
    'HOST:PORT' or 'ray://HOST:10001' connects to a remote head. Inside `ray job submit`, 'local' joins the job's cluster."""
    auth_token_env: str = "RAY_AUTH_TOKEN"
    """Environment variable holding the cluster's token when it runs with RAY_AUTH_MODE=token."""
    mode: Literal["colocate", "split"] = "colocate"
    """colocate: every role in one bundle (one GPU, vLLM sleeps while the learner steps); split: a bundle per actor."""
    device: Literal["cpu", "gpu"] = "cpu"
    """Which accelerator the plan is for."""
    num_cpus: Optional[float] = None
    """CPUs for a local cluster (None = all of this machine's)."""
    rollout: RoleResources = field(default_factory=lambda: RoleResources(num_cpus=0.5))
    """Resources of each rollout (vLLM) actor."""
    reward: RoleResources = field(default_factory=lambda: RoleResources(num_cpus=0.25))
    """Resources of each reward actor."""
    learner: RoleResources = field(default_factory=lambda: RoleResources(num_cpus=0.5))
    """Resources of each learner actor."""
    placement_timeout_s: float = 60.0
    """How long to wait for the placement group before reporting that the plan does not fit."""
    reservation: str = ""
    """Name of a detached placement group that holds this run's resources for longer than one stage (the course makes
    one per run: cluster/reservation.py). Given, the stage places its actors into that group's bundles instead of
    making a group of its own, and is refused at start when its plan does not fit them; '' = a group of its own."""


@dataclass
class LoraConfig:
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """Module names that receive adapters."""

    def __post_init__(self):
        check(self.r >= 1, "model.lora.r", f"must be >= 1, got {self.r}")


@dataclass
class ModelConfig:
    path: str = ""
    """A transformers model folder. Empty: build the tiny model named by `preset` (no hub needed)."""
    preset: str = "tiny"
    """Tiny-model preset used when `path` is empty: tiny | small | base (see tinymodels/)."""
    model_seed: int = 0
    """Seed for the tiny model's weights and tokenizer."""
    finetune: Literal["qlora", "lora", "full"] = "qlora"
    """qlora: 4-bit NF4 base + LoRA; lora: bf16/fp32 base + LoRA; full: every weight trains."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype of the frozen base in the learner's forward/backward (LoRA weights and optimizer state stay
    fp32). auto: bfloat16 where the hardware has it (every CUDA GPU; a CPU with AVX512-BF16 or AMX), float32
    elsewhere -- learners.models.resolve_dtype, which every consumer (learner, engines) applies."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Adapter shape."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (less memory, more time)."""
    bnb_fused_cpu_kernel: bool = False
    """qlora on CPU: let bitsandbytes use its fused bf16 kernel for no-grad forwards where the CPU has AVX512-BF16.
    Off (default): every forward of the learner -- training, reference, probe -- takes the same fp32 dequantise
    path, so the learner agrees with itself and gives the same numbers on every CPU (learners.models.select_4bit_kernel)."""
    adapter: str = ""
    """A saved PEFT adapter to start training from (e.g. the DPO stage's); empty: a fresh adapter."""
    reference_adapter: str = ""
    """The KL reference of RL stages: a saved PEFT adapter on the same base, frozen (e.g. the SFT adapter).
    Empty: the base with the adapter switched off, or, when `adapter` is set, a frozen copy of it."""

    def __post_init__(self):
        for key in ("adapter", "reference_adapter"):
            check(not getattr(self, key) or self.finetune != "full", f"model.{key}",
                  "needs model.finetune=qlora or lora (a full fine-tune has no adapter)")


@dataclass
class RolloutConfig:
    n_samples: int = 8
    """Completions per prompt (the GRPO group size)."""
    max_new_tokens: int = 24
    """Longest completion."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling."""
    stop: list[str] = field(default_factory=list)
    """Stop strings."""
    max_model_len: int = 256
    """Prompt + completion length the engine plans for."""
    gpu_memory_utilization: float = 0.2
    """vLLM's memory fraction (on CPU: of the NUMA node's memory)."""
    kv_cache_gib: float = 1.0
    """KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)."""
    enforce_eager: bool = True
    """No CUDA graphs / compilation (required on CPU, faster start everywhere)."""
    sleep_between_phases: bool = True
    """In colocate mode, put the engine to sleep while the learner steps (where the backend supports it)."""
    tensor_parallel_size: int = 1
    """GPUs per engine (split mode)."""
    weight_sync: Literal["auto", "lora", "merged"] = "auto"
    """How the learner's weights reach the engines: 'lora' hot-loads the adapter into vLLM's LoRA slots, 'merged'
    loads W_0 + s B A into the engine's linear layers in place (no LoRA kernels when generating; one engine per
    model copy, tensor_parallel_size 1). 'auto': merged on CPU (measured 2.2x faster generation on the small tiny
    model, bench/grpo.md), lora on GPU (adapters of a few MB instead of the model's matrices)."""
    sync_tolerance_factor: float = 4.0
    """The sync probe's tolerance is this factor times the engine-vs-learner gap measured on identical weights at
    start-up (the noise floor of this machine's kernels and dtypes; actors/sync.py). Not a gap in nats: a
    constant gap would be tuned to one machine."""
    seed: int = 0
    """Sampling seed."""

    def __post_init__(self):
        check(self.n_samples >= 1, "rollout.n_samples", f"must be >= 1, got {self.n_samples}")
        check(self.max_new_tokens >= 1, "rollout.max_new_tokens", "must be >= 1")
        check(self.temperature >= 0, "rollout.temperature", "must be >= 0")
        check(0 < self.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
        check(self.sync_tolerance_factor >= 1, "rollout.sync_tolerance_factor",
              f"must be >= 1 (a true sync reproduces the measured floor), got {self.sync_tolerance_factor}")


@dataclass
class RewardConfig:
    scorers: dict[str, float] = field(default_factory=lambda: {"json_valid": 0.2, "exact_answer": 1.0})
    """Scorer name -> weight; the reward is the weighted sum."""
    remote_url: str = ""
    """If set, score through the REST reward service at this URL instead of in-process."""
    remote_token_env: str = "REWARD_API_TOKEN"
    """Environment variable holding the reward service's bearer token."""
    timeout_s: float = 30.0
    """Deadline per scoring call; items not done by then get status 'timeout' and no score (left out of the loss)."""
    options: dict[str, dict] = field(default_factory=dict)
    """Per-scorer options, e.g. {json_schema: {max_depth: 20}}; an entry {scorer: BASE} reuses a scorer under a new name."""
    plugins: list[str] = field(default_factory=list)
    """Entry-point reward plugins (group raypost.rewards) the operator enables by name."""
    remote_allow: list[str] = field(default_factory=list)
    """Destinations (host or host:port) that remote HTTP scorers may call."""
    max_failed_frac: float = 0.5
    """Items a scorer could not judge (error, timeout, infra_error) are left out of the loss; a step where more than
    this fraction of its items failed stops the run with the scorer and status named."""

    def __post_init__(self):
        check(0 <= self.max_failed_frac <= 1, "reward.max_failed_frac", f"must be in [0, 1], got {self.max_failed_frac}")


@dataclass
class AlgoConfig:
    """The RL algorithm: a name picks the defaults (learners/algorithms.py), every key below left at null (None, its
    default) takes the algorithm's value, any key set here wins. null is the one spelling of "the default": an empty
    string or a 0 in its place is refused with the key named. One page per algorithm in docs/algorithms/.

    The names (algorithms, estimators, losses, aggregations) live in their registries, not here: learners/algorithms.py
    ALGORITHMS, learners/advantages.py ADV_ESTIMATORS, learners/policy_loss.py POLICY_LOSSES and AGGREGATIONS;
    docs/algorithms/index.md lists them, and a wrong name fails at start-up with the choices."""

    name: str = "grpo"
    """The algorithm: a row of learners/algorithms.py ALGORITHMS. pipelines/ppo.py runs those that train a critic
    (ppo), pipelines/grpo.py all the others."""
    adv_estimator: Optional[str] = None
    """Advantage estimator, a name in learners/advantages.py ADV_ESTIMATORS; null = the algorithm's."""
    policy_loss: Optional[str] = None
    """Policy loss, a name in learners/policy_loss.py POLICY_LOSSES (ppo_clip: token ratio, gspo: sequence ratio);
    null = the algorithm's (ppo_clip unless it says otherwise)."""
    loss_agg: Optional[str] = None
    """Loss aggregation, one of learners/policy_loss.py AGGREGATIONS; null = the algorithm's (token-mean unless it
    says otherwise)."""
    norm_len: Optional[int] = None
    """The constant L of seq-mean-token-sum-norm (Dr.GRPO), >= 1; null = rollout.max_new_tokens."""
    params: dict[str, Any] = field(default_factory=dict)
    """Hyperparameters of the chosen estimator or loss that have no key of their own, by the name of the function's
    keyword-only parameter (e.g. algo.params.eps=1e-4 for the GRPO estimator's std epsilon); the algorithm's row may
    set some. An unknown name is refused with the ones the estimator and loss take."""
    clip_low: Optional[float] = None
    """PPO clip epsilon below 1; null = the algorithm's (0.2; GSPO 3e-4)."""
    clip_high: Optional[float] = None
    """PPO clip epsilon above 1; null = the algorithm's (0.2; DAPO's clip-higher 0.28; GSPO 4e-4)."""
    kl_coef: float = 0.04
    """beta: weight of the KL to the reference policy (0 disables it and skips ref logprobs); the start value
    when kl_ctrl=adaptive."""
    kl_estimator: Optional[Literal["k1", "k2", "k3"]] = None
    """KL estimator (Schulman's k1, k2, k3); null = k3 when the KL is in the loss, k1 when it is a reward penalty."""
    kl_mode: Optional[Literal["loss", "reward"]] = None
    """loss: + beta * KL in the loss (GRPO); reward: -beta * KL_t added to every token's reward before the
    advantages (PPO-RLHF, RLOO, REINFORCE++); null = the algorithm's (loss unless it says otherwise)."""
    kl_ctrl: Literal["fixed", "adaptive"] = "fixed"
    """fixed beta, or the adaptive controller of Ziegler et al. 2019 (learners/kl_control.py)."""
    kl_target: float = 6.0
    """Adaptive controller: target KL per response (nats, summed over its tokens)."""
    kl_horizon: float = 10000.0
    """Adaptive controller: horizon in responses (larger = slower beta changes)."""
    entropy_coef: float = 0.0
    """Entropy bonus weight."""
    dual_clip: float = 0.0
    """Dual-clip constant c (> 1) for negative advantages; 0 switches dual clipping off (a value, not "the default")."""
    norm_adv_by_std: Optional[bool] = None
    """Divide group-relative advantages by the group std (GRPO: true) or not (Dr.GRPO: false); null = the
    algorithm's (true unless it says otherwise)."""
    gamma: float = 1.0
    """Discount over response tokens (GAE, REINFORCE++)."""
    lam: float = 0.95
    """GAE lambda (PPO)."""
    dynamic_sampling: Optional[bool] = None
    """DAPO: drop groups whose rewards are all equal and sample more prompts until the batch is full; null =
    the algorithm's (on for dapo, off otherwise)."""
    dynamic_sampling_max_rounds: int = 3
    """Extra generate rounds per step at most when refilling the batch (then it trains on what it has)."""
    overlong_filter: Optional[bool] = None
    """DAPO: truncated completions (finish_reason 'length') get no loss; null = the algorithm's (on for dapo, off
    otherwise). Soft overlong punishment is the 'overlong' scorer in reward.scorers."""
    ptx_coef: float = 0.0
    """PPO-ptx (InstructGPT): weight of the supervised loss on pretraining/SFT data mixed into the policy loss."""
    ptx_data: Optional[str] = None
    """Data for the ptx loss: a chat/prompt-completion file (datapipe formats); null = the built-in task's reference
    answers."""
    ptx_batch_size: int = 8
    """ptx sequences per optimizer step."""
    critic_model: Optional[str] = None
    """PPO critic: null = a value head on the policy's own base (4-bit under qlora) with its own LoRA; a folder
    (e.g. a trained reward model) or preset:NAME (a tiny model) = a separate model."""
    critic_finetune: Optional[Literal["qlora", "lora", "full"]] = None
    """How the critic trains; null = model.finetune."""
    critic_lr: float = 5e-4
    """Critic learning rate (AdamW)."""
    value_clip: float = 0.2
    """PPO value clipping: V is kept within +-value_clip of the old value in the loss (0 disables)."""

    def __post_init__(self):
        # One spelling of "the default": None. The old ones ("" and 0) are refused rather than read as None, so
        # that a config file or command line says one thing in one way.
        for key in ("adv_estimator", "policy_loss", "loss_agg", "ptx_data", "critic_model"):
            check(getattr(self, key) != "", f"algo.{key}",
                  "an empty string is not a value; leave the key out or set it to null for the default")
        check(self.norm_len is None or self.norm_len >= 1, "algo.norm_len",
              f"must be >= 1, got {self.norm_len}; leave it out or set it to null for rollout.max_new_tokens")
        for key in ("clip_low", "clip_high"):
            v = getattr(self, key)
            check(v is None or v >= 0, f"algo.{key}", f"must be >= 0, got {v}; null = the algorithm's default")
        check(self.kl_coef >= 0, "algo.kl_coef", f"must be >= 0, got {self.kl_coef}")
        check(self.kl_target > 0, "algo.kl_target", f"must be > 0, got {self.kl_target}")
        check(self.kl_horizon > 0, "algo.kl_horizon", f"must be > 0, got {self.kl_horizon}")
        check(0 < self.gamma <= 1, "algo.gamma", f"must be in (0, 1], got {self.gamma}")
        check(0 <= self.lam <= 1, "algo.lam", f"must be in [0, 1], got {self.lam}")
        check(self.dynamic_sampling_max_rounds >= 0, "algo.dynamic_sampling_max_rounds", "must be >= 0")
        check(self.ptx_coef >= 0, "algo.ptx_coef", f"must be >= 0, got {self.ptx_coef}")
        check(self.ptx_batch_size >= 1, "algo.ptx_batch_size", "must be >= 1")
        check(self.critic_lr > 0, "algo.critic_lr", f"must be > 0, got {self.critic_lr}")
        check(self.value_clip >= 0, "algo.value_clip", f"must be >= 0, got {self.value_clip}")


@dataclass
class TrainConfig:
    steps: int = 20
    """RL steps (each: generate, score, update, sync)."""
    prompts_per_step: int = 8
    """Prompts per step (each sampled rollout.n_samples times)."""
    lr: float = 1e-4
    """Learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up steps of the learning-rate schedule."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Schedule after warm-up."""
    micro_batch_size: int = 16
    """Sequences per forward/backward; gradients accumulate over a minibatch."""
    mini_batches: int = 1
    """Optimizer steps per RL step (the batch splits into this many minibatches)."""
    epochs: int = 1
    """Passes over each batch (PPO epochs)."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    heldout_prompts: int = 64
    """Held-out prompts scored (greedy) before and after training for summary.json."""
    max_staleness: int = 0
    """Asynchronous rollout: the engines generate batches t+1 .. t+k while the learner trains on batch t, so a batch
    may come from a policy up to k versions old (0 = synchronous: every batch from the current policy). Each sample
    carries the version that produced it; the lag is logged (rollout/staleness_*) and corrected by
    train.rollout_correction, which weighs by pi_old / mu with mu the engine's sampling logprobs."""
    rollout_correction: Literal["none", "tis", "mis"] = "tis"
    """Importance-sampling correction of the rollout/learner mismatch (learners/rollout_correction.py): tis
    weights each token's policy gradient by min(pi_old / mu, rollout_is_cap) (Yao et al. 2025), mis drops tokens
    whose ratio exceeds the cap, none only measures it (the rollout_corr/* metrics are logged in every mode)."""
    rollout_is_cap: float = 2.0
    """C of the correction: the truncation (tis) or rejection (mis) threshold of pi_old / mu, and the bound of
    the rollout_corr/frac_over metric (ratios outside [1/C, C])."""
    reference_logprobs: Literal["auto", "learner", "stream"] = "auto"
    """Who computes the reference policy's logprobs (algo.kl_coef > 0): 'learner', a pass over the batch between
    generation and the update (as TRL, veRL, OpenRLHF); 'stream', a reference scorer (actors/reference.py) that
    scores each row's tokens while the engine samples them, so the pass overlaps generation (CPU, colocated,
    synchronous, single-turn; the engines and the scorer each keep their share of the cores; the scorer holds its
    own copy of the frozen base). 'auto' is learner: on 2 cores
    streaming measured no faster (bench/grpo.md: both need the same cores); try stream where a CPU has cores the
    engine's decode leaves idle, with bench/grpo_vs_trl.py --ours-args train.reference_logprobs=stream."""
    reference_stream_every: int = 16
    """train.reference_logprobs=stream: decode steps between two chunks sent to the reference scorer (fewer: a
    shorter last chunk after generation, more messages)."""

    def __post_init__(self):
        check(self.steps >= 0, "train.steps", "must be >= 0")
        check(self.prompts_per_step >= 1, "train.prompts_per_step", "must be >= 1")
        check(self.lr > 0, "train.lr", "must be > 0")
        check(self.micro_batch_size >= 1, "train.micro_batch_size", "must be >= 1")
        check(self.mini_batches >= 1, "train.mini_batches", "must be >= 1")
        check(self.rollout_is_cap > 1, "train.rollout_is_cap", f"must be > 1, got {self.rollout_is_cap}")
        check(self.max_staleness >= 0, "train.max_staleness", f"must be >= 0 policy versions, got {self.max_staleness}")
        check(self.reference_stream_every >= 1, "train.reference_stream_every",
              f"must be >= 1 decode step, got {self.reference_stream_every}")


@dataclass
class DataConfig:
    train: str = "builtin:arithmetic"
    """Prompts: a JSONL/Parquet path, a saved `datasets` folder, or 'builtin:arithmetic'."""
    heldout: str = ""
    """Held-out prompts (same formats); empty = split off from `train` (builtin: a disjoint seed)."""
    prompt_field: str = "prompt"
    """Column with the prompt (a string, or a list of chat messages)."""
    answer_field: str = "answer"
    """Column with the reference answer the scorers compare against."""
    builtin_size: int = 2000
    """Rows generated for a builtin dataset."""
    warm_start_steps: int = 0
    """Supervised warm-start steps on the builtin task before RL (0 = none); cached by model and steps."""
    too_long: Literal["drop", "error"] = "drop"
    """Prompts longer than rollout.max_model_len - rollout.max_new_tokens tokens: drop them with a warning and a
    count, or stop with a config error. Checked before any actor starts."""


@dataclass
class CheckpointConfig:
    every: int = 5
    """Save every N steps (0 = only at the end)."""
    keep: int = 2
    """Complete checkpoints kept (older ones are deleted)."""


@dataclass
class Config:
    """One run of any stage. Top-level keys are the ones people type most (`run_name=demo resume=true`)."""

    run_name: str = "dev"
    """Run name; output goes to runs_dir/run_name."""
    runs_dir: str = "runs"
    """Folder holding runs (use an absolute path under `ray job submit --working-dir`)."""
    cache_dir: str = ".cache"
    """Built tiny models and warm starts are cached here."""
    seed: int = 0
    """Global seed (data order, sampling, init)."""
    resume: bool = False
    """Continue from the last complete checkpoint in the run folder."""
    overwrite: bool = False
    """Replace the run already in the run folder (its files are deleted); without it, or resume, a run folder
    that holds a run is refused."""
    tensorboard: bool = True
    """Write TensorBoard events next to metrics.jsonl."""
    progress: bool = True
    """Show a progress bar."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
