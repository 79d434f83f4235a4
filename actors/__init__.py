"""Ray actors: rollout (vLLM engine), reward (scorer pool), learner (4-bit base + LoRA). Plumbing only:
the math they run lives in learners/ and rewards/."""
