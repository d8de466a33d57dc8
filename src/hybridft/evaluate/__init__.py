"""Evaluation: generation-based scores per task on held-out splits."""
