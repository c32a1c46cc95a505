"""A third-party unlearning method, loaded by dotted path in the tests."""

from __future__ import annotations

from fedrec.unlearning.methods import UnlearningMethod


class OneRound(UnlearningMethod):
    """One repair round on the retained clients."""

    name = "one-round"

    def unlearn(self, job):
        return job.train_rounds(job.weights, job.serve_round + 1, job.serve_round + 1)
