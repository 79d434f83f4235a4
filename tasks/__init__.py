"""Prompt sets for RL: built-in verifiable tasks and loading users' prompt datasets."""
