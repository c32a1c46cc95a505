"""Differential privacy: mechanisms and the accountant (pure, no flwr)."""
