"""Federated unlearning: requests, the serving session, methods, metrics.

- :mod:`fedrec.unlearning.requests` parses and validates what is to be forgotten and
  keeps the audit log (``unlearning.jsonl``);
- :mod:`fedrec.unlearning.client` is the client side: a poll applies the due requests to
  private forget records and answers with counts; recommenders train on
  :func:`~fedrec.unlearning.client.forget_view`;
- :mod:`fedrec.unlearning.session` serves requests inside a run (after training, on a
  schedule, or on a finished run through ``fedrec unlearn`` / :func:`fedrec.unlearn`);
- :mod:`fedrec.unlearning.methods` holds the methods, plugins of the entry-point group
  ``fedrec.unlearning`` (retrain, sisa, federaser, gradient-ascent, finetune, influence);
- :mod:`fedrec.unlearning.metrics` is the registry of pure metric functions every method
  is judged by; :mod:`fedrec.unlearning.oracle` the simulation-only membership-inference
  evaluator.
"""
