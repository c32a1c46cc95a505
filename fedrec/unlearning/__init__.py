"""Federated unlearning (issue 11, in progress): the evaluation API comes first.

:mod:`fedrec.unlearning.metrics` is the registry of pure metric functions (completeness,
utility, efficiency, fairness, robustness) every unlearning method will be judged by.
"""
