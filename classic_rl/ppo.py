"""PPO with GAE on CartPole-v1 (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"), after CleanRL's
ppo.py (same defaults, same metric names).

    python -m classic_rl.ppo seed=1 total_timesteps=500000 run_dir=runs/classic_rl/ppo_seed1

Each iteration: roll the policy out for num_steps in num_envs environments; advantages by GAE
(Schulman et al. 2016) through ``learners.advantages.gae_advantages``; then update_epochs passes of
minibatch steps on the clipped surrogate

    L^CLIP = E_t[ min( rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t ) ],   rho_t = pi(a_t|s_t) / pi_old(a_t|s_t)

plus a (clipped) value loss and an entropy bonus.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Categorical

from classic_rl.cartpole import final_observations, finish_run, finished_episodes, make_envs
from classic_rl.episode_gae import rollout_gae
from config.loader import check, load
from runlog import RunLog


@dataclass
class Args:
    seed: int = 1
    """seeds torch, numpy and the environments"""
    total_timesteps: int = 500_000
    """environment steps over all envs"""
    learning_rate: float = 2.5e-4
    """Adam step size (linearly annealed to 0 when anneal_lr)"""
    anneal_lr: bool = True
    num_envs: int = 4
    """parallel environments"""
    num_steps: int = 128
    """steps per env per rollout; a rollout is num_envs * num_steps transitions"""
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 4
    """passes over each rollout"""
    norm_adv: bool = True
    """normalise advantages per minibatch"""
    clip_coef: float = 0.2
    """epsilon of the clipped surrogate"""
    clip_vloss: bool = True
    """clip the value update as the policy's (openai/baselines' PPO2)"""
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = None
    """stop an iteration's epochs once approx_kl exceeds this"""
    eval_episodes: int = 10
    """greedy episodes at the end"""
    run_dir: str = ""
    """where metrics.jsonl, tb/ and summary.json go; default runs/classic_rl/ppo_seed<seed>"""
    tensorboard: bool = True
    threads: int = 1
    """torch threads (these networks are tiny: more threads only contend)"""

    def __post_init__(self):
        for key in ("total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "threads"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        check(self.learning_rate > 0, "learning_rate", "must be > 0")
        check(0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1, "gamma", "gamma and gae_lambda must lie in [0, 1]")
        check(self.num_envs * self.num_steps % self.num_minibatches == 0, "num_minibatches",
              f"must divide num_envs * num_steps = {self.num_envs * self.num_steps}")
        self.run_dir = self.run_dir or f"runs/classic_rl/ppo_seed{self.seed}"


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights, constant bias (openai/baselines; one of PPO's implementation details)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Agent(nn.Module):
    """Separate actor and critic MLPs (64-64, tanh)."""

    def __init__(self, obs_dim: int, n_actions: int):
        super().__init__()
        self.critic = nn.Sequential(layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(), layer_init(nn.Linear(64, 64)),
                                    nn.Tanh(), layer_init(nn.Linear(64, 1), std=1.0))
        self.actor = nn.Sequential(layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(), layer_init(nn.Linear(64, 64)),
                                   nn.Tanh(), layer_init(nn.Linear(64, n_actions), std=0.01))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).squeeze(-1)

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        dist = Categorical(logits=self.actor(x), validate_args=False)
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.get_value(x)


def train(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    batch_size = args.num_envs * args.num_steps
    minibatch_size = batch_size // args.num_minibatches
    num_iterations = max(1, args.total_timesteps // batch_size)
    log = RunLog(args.run_dir, tensorboard=args.tensorboard, config=asdict(args))

    # --- environment and agent -------------------------------------------------------------------------
    envs = make_envs(args.num_envs, args.seed)
    obs_dim, n_actions = envs.single_observation_space.shape[0], envs.single_action_space.n
    agent = Agent(obs_dim, n_actions)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    # --- rollout storage [T, N] --------------------------------------------------------------------------
    T, N = args.num_steps, args.num_envs
    obs = torch.zeros(T, N, obs_dim)
    actions = torch.zeros(T, N, dtype=torch.long)
    logprobs = torch.zeros(T, N)
    rewards = torch.zeros(T, N)
    terminated = torch.zeros(T, N, dtype=torch.bool)
    truncated = torch.zeros(T, N, dtype=torch.bool)
    values = torch.zeros(T, N)
    final_values = torch.zeros(T, N)

    global_step, start = 0, time.time()
    episodes: list[tuple[float, int]] = []
    next_obs = torch.as_tensor(envs.reset(seed=args.seed)[0], dtype=torch.float32)
    for iteration in range(1, num_iterations + 1):
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / num_iterations) * args.learning_rate

        # --- collect a rollout with the current policy ---------------------------------------------------
        new_episodes = []
        for step in range(T):
            global_step += N
            obs[step] = next_obs
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
            actions[step], logprobs[step], values[step] = action, logprob, value
            o, r, term, trunc, info = envs.step(action.numpy())
            rewards[step] = torch.as_tensor(r, dtype=torch.float32)
            terminated[step], truncated[step] = torch.as_tensor(term), torch.as_tensor(trunc)
            if trunc.any():  # a time-limit cut is not an end: bootstrap from the state it stopped in
                last = torch.as_tensor(final_observations(info, trunc, o), dtype=torch.float32)
                with torch.no_grad():
                    final_values[step] = agent.get_value(last)
            next_obs = torch.as_tensor(o, dtype=torch.float32)
            new_episodes += finished_episodes(info)
        episodes += new_episodes

        # --- advantages: GAE over the rollout's episode pieces -------------------------------------------
        with torch.no_grad():
            last_values = agent.get_value(next_obs)
        advantages, returns = rollout_gae(rewards, values, terminated, truncated, final_values, last_values,
                                          args.gamma, args.gae_lambda)

        # --- optimise the clipped surrogate over minibatches ----------------------------------------------
        b_obs, b_actions, b_logprobs = obs.reshape(-1, obs_dim), actions.reshape(-1), logprobs.reshape(-1)
        b_adv, b_returns, b_values = advantages.reshape(-1), returns.reshape(-1), values.reshape(-1)
        clipfracs = []
        for epoch in range(args.update_epochs):
            perm = torch.randperm(batch_size)
            for s in range(0, batch_size, minibatch_size):
                mb = perm[s:s + minibatch_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb], b_actions[mb])
                logratio = newlogprob - b_logprobs[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    old_approx_kl = (-logratio).mean()  # k1 estimator
                    approx_kl = ((ratio - 1) - logratio).mean()  # k3 estimator (Schulman, "Approximating KL")
                    clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean().item())
                mb_adv = b_adv[mb]
                if args.norm_adv:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(-mb_adv * ratio,
                                    -mb_adv * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)).mean()
                if args.clip_vloss:
                    v_clipped = b_values[mb] + torch.clamp(newvalue - b_values[mb], -args.clip_coef, args.clip_coef)
                    v_loss = 0.5 * torch.max((newvalue - b_returns[mb]) ** 2, (v_clipped - b_returns[mb]) ** 2).mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_returns[mb]) ** 2).mean()
                entropy_loss = entropy.mean()
                loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
            if args.target_kl is not None and approx_kl > args.target_kl:
                break

        var_y = b_returns.var()
        explained_var = float("nan") if var_y == 0 else float(1 - (b_returns - b_values).var() / var_y)
        metrics = {
            "charts/learning_rate": optimizer.param_groups[0]["lr"],
            "losses/value_loss": v_loss.item(), "losses/policy_loss": pg_loss.item(),
            "losses/entropy": entropy_loss.item(), "losses/old_approx_kl": old_approx_kl.item(),
            "losses/approx_kl": approx_kl.item(), "losses/clipfrac": float(np.mean(clipfracs)),
            "losses/explained_variance": explained_var,
            "charts/SPS": int(global_step / (time.time() - start)),
        }
        if new_episodes:
            metrics["charts/episodic_return"] = float(np.mean([r for r, _ in new_episodes]))
            metrics["charts/episodic_length"] = float(np.mean([n for _, n in new_episodes]))
        log.log(global_step, metrics)
    envs.close()

    # --- how good is it: greedy evaluation beside a random policy -------------------------------------------
    return finish_run(log, args, "ppo", lambda x: agent.actor(x).argmax(-1), global_step, episodes, start,
                      curves=["charts/episodic_return", "losses/approx_kl", "losses/explained_variance"], name="PPO")


if __name__ == "__main__":
    print(train(load(Args, None, sys.argv[1:])))
