"""A2C, synchronous advantage actor-critic, on CartPole-v1 (Mnih et al. 2016, "Asynchronous Methods for Deep
Reinforcement Learning", in the synchronous form of openai/baselines and Stable-Baselines3).

    python -m classic_rl.a2c seed=1 total_timesteps=500000 run_dir=runs/classic_rl/a2c_seed1

Every num_steps steps of num_envs environments, one gradient step on

    L = -E_t[ log pi(a_t|s_t) A_t ] + vf_coef * E_t[ (V(s_t) - R_t)^2 ] / 2 - ent_coef * E_t[ H(pi(.|s_t)) ]

where A_t = R_t - V(s_t) and R_t the n-step return bootstrapped from the critic. With gae_lambda = 1 (the
default, A2C's own) the advantage is exactly that n-step one; lambda < 1 gives GAE. Both come from
``learners.advantages.gae_advantages`` through ``classic_rl.episode_gae.rollout_gae``. Unlike PPO there is one
update per rollout and no ratio: the data is always on-policy.
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
    learning_rate: float = 7e-4
    """RMSprop step size (Stable-Baselines3's A2C default)"""
    num_envs: int = 8
    num_steps: int = 5
    """n of the n-step return: steps per env per update"""
    gamma: float = 0.99
    gae_lambda: float = 1.0
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    eval_episodes: int = 10
    run_dir: str = ""
    """default runs/classic_rl/a2c_seed<seed>"""
    tensorboard: bool = True
    log_every: int = 20
    """updates between metric rows (an update is only num_envs * num_steps steps)"""
    threads: int = 1

    def __post_init__(self):
        for key in ("total_timesteps", "num_envs", "num_steps", "log_every", "threads"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        check(self.learning_rate > 0, "learning_rate", "must be > 0")
        check(0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1, "gamma", "gamma and gae_lambda must lie in [0, 1]")
        self.run_dir = self.run_dir or f"runs/classic_rl/a2c_seed{self.seed}"


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs (64-64, tanh), orthogonally initialised as in openai/baselines."""

    def __init__(self, obs_dim: int, n_actions: int):
        super().__init__()

        def layer(n_in, n_out, std=np.sqrt(2)):
            lin = nn.Linear(n_in, n_out)
            nn.init.orthogonal_(lin.weight, std)
            nn.init.zeros_(lin.bias)
            return lin

        self.actor = nn.Sequential(layer(obs_dim, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, n_actions, 0.01))
        self.critic = nn.Sequential(layer(obs_dim, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, 1, 1.0))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).squeeze(-1)


def train(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    log = RunLog(args.run_dir, tensorboard=args.tensorboard, config=asdict(args))

    # --- environment and agent -------------------------------------------------------------------------
    envs = make_envs(args.num_envs, args.seed)
    obs_dim, n_actions = envs.single_observation_space.shape[0], envs.single_action_space.n
    agent = ActorCritic(obs_dim, n_actions)
    optimizer = torch.optim.RMSprop(agent.parameters(), lr=args.learning_rate, alpha=0.99, eps=1e-5)

    T, N = args.num_steps, args.num_envs
    num_updates = max(1, args.total_timesteps // (T * N))
    global_step, start = 0, time.time()
    episodes: list[tuple[float, int]] = []
    recent: list[tuple[float, int]] = []
    next_obs = torch.as_tensor(envs.reset(seed=args.seed)[0], dtype=torch.float32)
    for update in range(1, num_updates + 1):
        # --- n steps in every env, keeping the graph: one update uses them directly -------------------------
        logprobs, entropies, values = [], [], []
        rewards = torch.zeros(T, N)
        terminated = torch.zeros(T, N, dtype=torch.bool)
        truncated = torch.zeros(T, N, dtype=torch.bool)
        final_values = torch.zeros(T, N)
        for step in range(T):
            dist = Categorical(logits=agent.actor(next_obs), validate_args=False)
            action = dist.sample()
            logprobs.append(dist.log_prob(action))
            entropies.append(dist.entropy())
            values.append(agent.get_value(next_obs))
            o, r, term, trunc, info = envs.step(action.numpy())
            global_step += N
            rewards[step] = torch.as_tensor(r, dtype=torch.float32)
            terminated[step], truncated[step] = torch.as_tensor(term), torch.as_tensor(trunc)
            if trunc.any():  # time-limit cut: bootstrap from the state it stopped in
                with torch.no_grad():
                    final_values[step] = agent.get_value(
                        torch.as_tensor(final_observations(info, trunc, o), dtype=torch.float32))
            next_obs = torch.as_tensor(o, dtype=torch.float32)
            recent += finished_episodes(info)
        values = torch.stack(values)

        # --- n-step advantages (GAE with lambda = 1) and one gradient step ---------------------------------
        with torch.no_grad():
            last_values = agent.get_value(next_obs)
        advantages, returns = rollout_gae(rewards, values.detach(), terminated, truncated, final_values,
                                          last_values, args.gamma, args.gae_lambda)
        policy_loss = -(torch.stack(logprobs) * advantages).mean()
        value_loss = 0.5 * ((values - returns) ** 2).mean()
        entropy = torch.stack(entropies).mean()
        loss = policy_loss + args.vf_coef * value_loss - args.ent_coef * entropy
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
        optimizer.step()

        if update % args.log_every == 0 or update == num_updates:
            metrics = {"losses/policy_loss": policy_loss.item(), "losses/value_loss": value_loss.item(),
                       "losses/entropy": entropy.item(), "charts/SPS": int(global_step / (time.time() - start))}
            if recent:
                metrics["charts/episodic_return"] = float(np.mean([x for x, _ in recent]))
                metrics["charts/episodic_length"] = float(np.mean([n for _, n in recent]))
            log.log(global_step, metrics)
            episodes += recent
            recent = []
    episodes += recent
    envs.close()

    return finish_run(log, args, "a2c", lambda x: agent.actor(x).argmax(-1), global_step, episodes, start,
                      curves=["charts/episodic_return", "losses/value_loss", "losses/entropy"], name="A2C")


if __name__ == "__main__":
    print(train(load(Args, None, sys.argv[1:])))
