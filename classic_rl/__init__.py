"""Classic RL foundations, each algorithm readable top to bottom (in the CleanRL spirit).

Tabular (finite MDPs given as tables):
    mdp.py                 -- the MDP interface: gymnasium toy-text models (FrozenLake, CliffWalking) and hand-made grids
    dynamic_programming.py -- policy evaluation, value iteration, policy iteration (Bellman expectation / optimality)
    td_control.py          -- Q-learning and SARSA with epsilon-greedy exploration
    gridplots.py           -- value heatmaps with greedy arrows, paths, learning curves, the Q-value animation
    demo.py                -- ``python -m classic_rl.demo --out runs/classic_rl`` draws all of the pictures

Deep RL on CartPole-v1 (each script: config dataclass -> environment -> network -> loop):
    dqn.py, reinforce.py, a2c.py, ppo.py  -- ``python -m classic_rl.ppo seed=1 total_timesteps=500000``
    cartpole.py            -- the environments, episode statistics and the greedy evaluation the scripts share
    episode_gae.py         -- cuts vector-env rollouts into episodes so ``learners.advantages.gae_advantages`` applies
    benchmark.py           -- the 3-seed runs and the figure in docs/classic_rl.md
"""
