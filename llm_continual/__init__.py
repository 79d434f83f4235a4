"""Continual learning for the LLM: a model that keeps absorbing new text, tasks and preferences without losing
the old ones.

- :mod:`llm_continual.streams`, :mod:`llm_continual.user_streams`: task streams for continual pre-training,
  instruction tuning and alignment (built-in synthetic ones, or users' datasets).
- methods (:mod:`llm_continual.methods` lists them): sequential fine-tuning and LoRA baselines,
  :mod:`~llm_continual.replay`, :mod:`~llm_continual.inscl`, :mod:`~llm_continual.cppo`,
  :mod:`~llm_continual.copr`, :mod:`~llm_continual.multistage`, and continual/'s EWC, LwF and per-task LoRA on
  the LLM learner (:mod:`~llm_continual.objectives` holds the LLM objectives as continual hooks).
- :mod:`llm_continual.worker`: the learner (a Ray actor in pipelines/continual.py).
- :mod:`llm_continual.evaluation`, :mod:`llm_continual.report`: per-task suites for the evaluation panel, the
  accuracy matrix, the methods' comparison table and plots.

See docs/continual_llm.md.
"""
