"""The math of post-training as small pure torch functions, and model loading (4-bit + LoRA).

Nothing here imports Ray: a reader finds every loss without reading an actor.
"""
