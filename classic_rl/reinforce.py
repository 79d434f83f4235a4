"""REINFORCE with a learned baseline on CartPole-v1 (Williams 1992; Sutton & Barto 2018, sec. 13.4).

    python -m classic_rl.reinforce seed=1 total_timesteps=500000 run_dir=runs/classic_rl/reinforce_seed1

Play whole episodes with the stochastic policy, then ascend the Monte Carlo policy gradient

    grad J = E[ sum_t grad log pi(a_t|s_t) (G_t - b(s_t)) ],    G_t = sum_k gamma^k r_{t+k}

with a state-value baseline b(s) = V_w(s) fitted to G_t; subtracting it leaves the gradient unbiased and
lowers its variance. G_t - V(s_t) is GAE with lambda = 1 (the deltas telescope), so the advantages come from
``learners.advantages.gae_advantages(rewards, values, mask, gamma, lam=1)`` over the padded episodes.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Categorical

from classic_rl.cartpole import final_observations, finish_run, make_envs
from config.loader import check, load
from learners.advantages import gae_advantages
from runlog import RunLog


@dataclass
class Args:
    seed: int = 1
    """seeds torch, numpy and the environments"""
    total_timesteps: int = 500_000
    learning_rate: float = 1e-3
    """Adam step size of the policy"""
    value_learning_rate: float = 1e-3
    """Adam step size of the baseline"""
    episodes_per_update: int = 8
    """whole episodes per gradient step (played by as many environments side by side)"""
    gamma: float = 0.99
    ent_coef: float = 0.0
    norm_adv: bool = True
    """normalise G_t - V(s_t) over the batch (a per-batch step-size scale; the direction is unchanged)"""
    max_grad_norm: float = 1.0
    eval_episodes: int = 10
    run_dir: str = ""
    """default runs/classic_rl/reinforce_seed<seed>"""
    tensorboard: bool = True
    threads: int = 1

    def __post_init__(self):
        for key in ("total_timesteps", "episodes_per_update", "threads"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        check(self.learning_rate > 0 and self.value_learning_rate > 0, "learning_rate", "must be > 0")
        check(0 <= self.gamma <= 1, "gamma", "must lie in [0, 1]")
        self.run_dir = self.run_dir or f"runs/classic_rl/reinforce_seed{self.seed}"


def mlp(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, n_out))


def train(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    log = RunLog(args.run_dir, tensorboard=args.tensorboard, config=asdict(args))

    # --- environments: one per episode of a batch --------------------------------------------------------
    E = args.episodes_per_update
    envs = make_envs(E, args.seed)
    obs_dim, n_actions = envs.single_observation_space.shape[0], envs.single_action_space.n
    policy, baseline = mlp(obs_dim, n_actions), mlp(obs_dim, 1)
    pi_opt = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)
    v_opt = torch.optim.Adam(baseline.parameters(), lr=args.value_learning_rate)

    global_step, start, update = 0, time.time(), 0
    episodes: list[tuple[float, int]] = []
    obs, _ = envs.reset(seed=args.seed)
    while global_step < args.total_timesteps:
        # --- play E whole episodes (each env plays one; an env whose episode ended waits) ------------------
        traj_obs, traj_act, traj_rew = [[] for _ in range(E)], [[] for _ in range(E)], [[] for _ in range(E)]
        bootstrap_obs = [None] * E  # the state a time-limit cut stopped in (the 500-step limit)
        running = np.ones(E, dtype=bool)
        while running.any():
            with torch.no_grad():
                actions = Categorical(logits=policy(torch.as_tensor(obs)), validate_args=False).sample().numpy()
            next_obs, rewards, terminated, truncated, info = envs.step(actions)
            last_obs = final_observations(info, terminated | truncated, next_obs)
            for i in np.flatnonzero(running):
                traj_obs[i].append(obs[i])
                traj_act[i].append(actions[i])
                traj_rew[i].append(rewards[i])
                global_step += 1
                if truncated[i] and not terminated[i]:
                    bootstrap_obs[i] = last_obs[i]
                if terminated[i] or truncated[i]:
                    running[i] = False
            obs = next_obs
        # Envs that finished early started new episodes meanwhile; restart all so every batch is fresh.
        obs, _ = envs.reset()
        episodes += [(float(sum(rw)), len(rw)) for rw in traj_rew]

        # --- pad the episodes into [E, L] rows: advantages G_t - V(s_t) by GAE with lambda = 1 --------------
        L = max(len(r) for r in traj_rew)
        o = torch.zeros(E, L, obs_dim)
        a = torch.zeros(E, L, dtype=torch.long)
        r = torch.zeros(E, L)
        mask = torch.zeros(E, L)
        for i in range(E):
            n = len(traj_rew[i])
            o[i, :n] = torch.as_tensor(np.array(traj_obs[i]))
            a[i, :n] = torch.as_tensor(np.array(traj_act[i]))
            r[i, :n] = torch.as_tensor(np.array(traj_rew[i]), dtype=torch.float32)
            mask[i, :n] = 1.0
            if bootstrap_obs[i] is not None:  # not an end: the return goes on beyond the cut
                with torch.no_grad():
                    r[i, n - 1] += args.gamma * baseline(torch.as_tensor(bootstrap_obs[i])).squeeze()
        values = baseline(o).squeeze(-1)
        advantages, returns = gae_advantages(r, values.detach(), mask, gamma=args.gamma, lam=1.0)
        valid = mask.bool()
        adv = advantages[valid]
        if args.norm_adv:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)

        # --- one policy-gradient step and one baseline regression step -------------------------------------
        dist = Categorical(logits=policy(o[valid]), validate_args=False)
        policy_loss = -(dist.log_prob(a[valid]) * adv).mean()
        entropy = dist.entropy().mean()
        pi_opt.zero_grad()
        (policy_loss - args.ent_coef * entropy).backward()
        nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
        pi_opt.step()
        value_loss = 0.5 * ((values[valid] - returns[valid]) ** 2).mean()
        v_opt.zero_grad()
        value_loss.backward()
        nn.utils.clip_grad_norm_(baseline.parameters(), args.max_grad_norm)
        v_opt.step()
        update += 1

        batch = episodes[-E:]
        log.log(global_step, {
            "charts/episodic_return": float(np.mean([x for x, _ in batch])),
            "charts/episodic_length": float(np.mean([n for _, n in batch])),
            "losses/policy_loss": policy_loss.item(), "losses/value_loss": value_loss.item(),
            "losses/entropy": entropy.item(), "charts/SPS": int(global_step / (time.time() - start)),
        })
    envs.close()

    return finish_run(log, args, "reinforce", lambda x: policy(x).argmax(-1), global_step, episodes, start,
                      curves=["charts/episodic_return", "losses/value_loss", "losses/entropy"],
                      name="REINFORCE with baseline")


if __name__ == "__main__":
    print(train(load(Args, None, sys.argv[1:])))
