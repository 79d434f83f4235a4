"""One evaluation panel for every stage: perplexity, format usability, JSON validity and schema conformance,
exact match, pass@k, win-rate and length statistics, for a model or a model + LoRA adapter."""
