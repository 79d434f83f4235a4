"""DQN on CartPole-v1 (Mnih et al. 2015, "Human-level control through deep reinforcement learning"), after
CleanRL's dqn.py (same defaults, same metric names).

    python -m classic_rl.dqn seed=1 total_timesteps=500000 run_dir=runs/classic_rl/dqn_seed1

Q-learning with a network: act epsilon-greedily, store transitions in a replay buffer, and regress
Q(s, a; theta) on the target computed with a periodically copied target network theta^-:

    y = r + gamma * (1 - terminated) * max_a' Q(s', a'; theta^-),     L = E_(s,a,r,s')~D [ (Q(s, a; theta) - y)^2 ]

The replay buffer breaks the correlation of consecutive samples; the frozen target keeps y from chasing
its own updates. A time-limit cut (truncation) is not terminal, so it still bootstraps from s'.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from classic_rl.cartpole import final_observations, finish_run, finished_episodes, make_envs
from config.loader import check, load
from runlog import RunLog


@dataclass
class Args:
    seed: int = 1
    """seeds torch, numpy and the environments"""
    total_timesteps: int = 500_000
    learning_rate: float = 2.5e-4
    num_envs: int = 1
    buffer_size: int = 10_000
    """replay buffer capacity (oldest transitions are overwritten)"""
    gamma: float = 0.99
    tau: float = 1.0
    """target update: theta^- <- tau theta + (1 - tau) theta^- (1.0 = a hard copy, as in the paper)"""
    target_network_frequency: int = 500
    """environment steps between target updates"""
    batch_size: int = 128
    start_e: float = 1.0
    end_e: float = 0.05
    exploration_fraction: float = 0.5
    """fraction of total_timesteps over which epsilon falls linearly from start_e to end_e"""
    learning_starts: int = 10_000
    """environment steps of pure exploration before the first update"""
    train_frequency: int = 10
    """environment steps between gradient steps"""
    max_grad_norm: float = 0.5
    eval_episodes: int = 10
    run_dir: str = ""
    """default runs/classic_rl/dqn_seed<seed>"""
    tensorboard: bool = True
    threads: int = 1

    def __post_init__(self):
        for key in ("total_timesteps", "num_envs", "buffer_size", "batch_size", "target_network_frequency",
                    "train_frequency", "threads"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        check(0 < self.tau <= 1, "tau", "must lie in (0, 1]")
        check(0 <= self.end_e <= self.start_e <= 1, "start_e", "need 0 <= end_e <= start_e <= 1")
        check(0 < self.exploration_fraction <= 1, "exploration_fraction", "must lie in (0, 1]")
        check(self.batch_size <= self.buffer_size, "batch_size", "must not exceed buffer_size")
        self.run_dir = self.run_dir or f"runs/classic_rl/dqn_seed{self.seed}"


class QNetwork(nn.Module):
    """CleanRL's CartPole Q-network: 120-84 ReLU, one output per action."""

    def __init__(self, obs_dim: int, n_actions: int):
        super().__init__()
        self.network = nn.Sequential(nn.Linear(obs_dim, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                                     nn.Linear(84, n_actions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class ReplayBuffer:
    """A ring buffer of transitions (s, a, r, s', terminated), sampled uniformly."""

    def __init__(self, capacity: int, obs_dim: int, rng: np.random.Generator):
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.capacity, self.pos, self.size, self.rng = capacity, 0, 0, rng

    def add(self, obs, next_obs, actions, rewards, terminated) -> None:
        for i in range(len(obs)):
            j = self.pos
            self.obs[j], self.next_obs[j], self.actions[j] = obs[i], next_obs[i], actions[i]
            self.rewards[j], self.terminated[j] = rewards[i], terminated[i]
            self.pos = (self.pos + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, n: int) -> tuple[torch.Tensor, ...]:
        idx = self.rng.integers(0, self.size, size=n)
        return tuple(torch.from_numpy(a[idx]) for a in
                     (self.obs, self.actions, self.rewards, self.next_obs, self.terminated))


def linear_schedule(start_e: float, end_e: float, duration: int, t: int) -> float:
    """epsilon_t = start_e + (end_e - start_e) * min(1, t / duration)."""
    return start_e + (end_e - start_e) * min(1.0, t / duration)


def train(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    log = RunLog(args.run_dir, tensorboard=args.tensorboard, config=asdict(args))

    # --- environment, networks, replay buffer ------------------------------------------------------------
    envs = make_envs(args.num_envs, args.seed)
    obs_dim, n_actions = envs.single_observation_space.shape[0], envs.single_action_space.n
    q_network = QNetwork(obs_dim, n_actions)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate)
    target_network = QNetwork(obs_dim, n_actions)
    target_network.load_state_dict(q_network.state_dict())
    rb = ReplayBuffer(args.buffer_size, obs_dim, rng)

    start = time.time()
    episodes: list[tuple[float, int]] = []
    obs, _ = envs.reset(seed=args.seed)
    global_step = 0
    while global_step < args.total_timesteps:
        # --- act epsilon-greedily and store the transition ---------------------------------------------------
        epsilon = linear_schedule(args.start_e, args.end_e, int(args.exploration_fraction * args.total_timesteps),
                                  global_step)
        if rng.random() < epsilon:
            actions = envs.action_space.sample()
        else:
            with torch.no_grad():
                actions = q_network(torch.from_numpy(obs)).argmax(-1).numpy()
        next_obs, rewards, terminated, truncated, info = envs.step(actions)
        global_step += args.num_envs
        # s' of an ended episode is its true last observation, not the reset one that next_obs holds
        real_next_obs = final_observations(info, terminated | truncated, next_obs)
        rb.add(obs, real_next_obs, actions, rewards, terminated)
        obs = next_obs
        for ret, length in finished_episodes(info):
            episodes.append((ret, length))
            log.log(global_step, {"charts/episodic_return": ret, "charts/episodic_length": length,
                                  "charts/epsilon": epsilon})

        # --- learn from replayed transitions -------------------------------------------------------------------
        if global_step > args.learning_starts and global_step % args.train_frequency < args.num_envs:
            b_obs, b_actions, b_rewards, b_next_obs, b_terminated = rb.sample(args.batch_size)
            with torch.no_grad():
                target_max = target_network(b_next_obs).max(-1).values
                td_target = b_rewards + args.gamma * target_max * (1.0 - b_terminated)
            old_val = q_network(b_obs).gather(1, b_actions[:, None]).squeeze(1)
            loss = F.mse_loss(td_target, old_val)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(q_network.parameters(), args.max_grad_norm)
            optimizer.step()
            if global_step % 100 < args.num_envs:
                log.log(global_step, {"losses/td_loss": loss.item(), "losses/q_values": old_val.mean().item(),
                                      "charts/SPS": int(global_step / (time.time() - start))})
            if global_step % args.target_network_frequency < args.num_envs:
                for tp, qp in zip(target_network.parameters(), q_network.parameters()):
                    tp.data.copy_(args.tau * qp.data + (1.0 - args.tau) * tp.data)
    envs.close()

    return finish_run(log, args, "dqn", lambda x: q_network(x).argmax(-1), global_step, episodes, start,
                      curves=["charts/episodic_return", "losses/td_loss", "losses/q_values"], name="DQN")


if __name__ == "__main__":
    print(train(load(Args, None, sys.argv[1:])))
