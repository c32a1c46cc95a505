"""Federated unlearning (issue 11, in progress): the evaluation API comes first.

:mod:`fedrec.unlearning.metrics` is the registry of pure metric functions (completeness,
utility, efficiency, fairness, robustness) every unlearning method will be judged by;
:mod:`fedrec.unlearning.requests` parses and validates what is to be forgotten and keeps
the audit log (``unlearning.jsonl``). Methods, the ``fedrec unlearn`` command and the
in-training request schedule are still to come.
"""
