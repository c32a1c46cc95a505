"""Diagnose FedFACT-Post calibration round by round (issue 10: Bank seed 0, German).

Trains the FedAvg score model with the FedFACT protocol (``adult_dp.toml`` with only the
dataset changed, as a new user would), then replays the calibration rounds with the pure
client / server maths of :mod:`fedrec.algorithms.fedfact` (the same calls the client and
server halves make) and prints, per round:

- ``smoothed``: the constraint values the duals see (global ``|sum_k p_k grad_k|``, i.e.
  the smoothed classifier's train-set gap; local: ``max_k |p_k grad_mu_k|``);
- ``deployed (train)``: the deployed classifier's gap on the train rows (label-based;
  expected over the draws for the randomized rule), global and max over clients;
- ``held-out``: the deployed classifier's global gap on the test rows;
- ``|lambda|_1`` and whether the server accepted the round's candidate.

Round 0 is the FedAvg model itself (argmax of the scores).

Gaps are the constrained (subgroup) form ``max |P(Yhat=y|A=a) - P(Yhat=y)|``.

``--config paper`` is fedrec's former default (the paper's soft-max-weighted average at
beta 0.05, a fixed server step 0.6, deterministic argmax, no re-calibration);
``--config fedrec`` the current default (entropic smoothing at beta 0.01, damped
proximal Newton on lambda, randomized output, isotonic scores for eop/eo).

Usage::

    FEDREC_DATA_DIR=../shared/data python experiments/fedfact/diagnose.py --dataset bank --seed 0
    python experiments/fedfact/diagnose.py --dataset german --seed 2 --config fedrec
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

CONFIGS = {
    "paper": {
        "smoothing": "softmax-average",
        "beta": 0.05,
        "solver": "gradient",
        "output": "argmax",
        "calibrate": False,
        "rounds": 10,
    },
    "fedrec": {
        "smoothing": "entropic",
        "beta": 0.01,
        "solver": "newton",
        "output": "randomized",
        "calibrate": True,
        "rounds": 30,
    },
}


def fedavg_model(dataset: str, seed: int, out: Path):
    import fedrec
    from fedrec.callbacks import load_checkpoint
    from fedrec.config import load_toml, validate
    from fedrec.models import set_weights
    from fedrec.tasks import initial_model, load_client_data

    flat = {
        k: v for k, v in load_toml(HERE / "adult_dp.toml").items() if not k.startswith("strategy.")
    }
    if dataset != "adult":
        flat.update({"dataset.name": dataset, "dataset.sensitive": ""})
    flat.update({"seed": seed, "strategy.name": "fedavg", "output.plots": False})
    fedrec.run(flat, backend="local", out=out, quiet=True)
    cfg = validate(flat)
    _, weights, _ = load_checkpoint(out / "checkpoint.npz")
    data = [load_client_data(cfg, k) for k in range(cfg.partition.num_clients)]
    model = initial_model(cfg, data[0].num_features, data[0].num_classes)
    set_weights(model, weights)
    return model, data


def replay(model, data, criterion: str, scope: str, xi: float, conf: dict, seed: int) -> list:
    from fedrec.algorithms import fedfact as ff
    from fedrec.algorithms.calibration import GroupCalibrator
    from fedrec.seeding import derive_seed
    from fedrec.training import predict_proba

    A, m = data[0].num_groups, data[0].num_classes
    etas = []
    for d in data:
        e_tr, e_te = predict_proba(model, d.X_train), predict_proba(model, d.X_test)
        if conf["calibrate"] and criterion in ("eop", "eo"):
            cal = GroupCalibrator().fit(e_tr, d.y_train, d.a_train, A)
            e_tr, e_te = cal.apply(e_tr, d.a_train), cal.apply(e_te, d.a_test)
        etas.append((e_tr, e_te))
    own = [d.counts("train").T for d in data]
    pooled = sum(own)
    clients = [
        ff.PostProcessingClient(
            eta=e_tr,
            a=d.a_train,
            own_counts=own[k],
            pooled_counts=pooled,
            criterion=criterion,
            scope=scope,
            xi_g=xi,
            xi_k=xi,
            bound=5.0,
            beta=conf["beta"],
            inner="lbfgs",
            smoothing=conf["smoothing"],
        )
        for k, (d, (e_tr, _)) in enumerate(zip(data, etas))
    ]
    w = [c.p_k for c in clients]
    draws = [
        np.random.default_rng(derive_seed(seed, "fedfact-draw", k)).random(len(d.y_test))
        for k, d in enumerate(data)
    ]

    def rule(c, lam, eta=None, a=None):
        if conf["output"] == "argmax":
            return np.eye(m)[c.predict(lam, eta, a)]
        return c.proba(lam, eta, a)

    # round 0: the FedAvg model itself (argmax of eta, no calibration)
    base_train = ff.fairness_gap(
        criterion,
        np.stack(
            [
                ff.expected_counts(d.y_train, np.eye(m)[c.eta.argmax(1)], d.a_train, A)
                for c, d in zip(clients, data)
            ]
        ),
        expected=True,
    )
    base_test = ff.fairness_gap(
        criterion,
        np.stack(
            [
                ff.expected_counts(
                    d.y_test, np.eye(m)[predict_proba(model, d.X_test).argmax(1)], d.a_test, A
                )
                for d in data
            ]
        ),
        expected=True,
    )
    rows = [
        {
            "round": 0,
            "lambda_l1": 0.0,
            "accepted": True,
            "smoothed_g": float("nan"),
            "smoothed_l": float("nan"),
            "train_g": base_train["global"],
            "train_l": base_train["local_max"],
            "heldout_g": base_test["global"],
            "heldout_l": base_test["local_max"],
            "acc": base_test["accuracy"],
        }
    ]
    lam, state = np.zeros(clients[0].num_global), None
    for t in range(conf["rounds"]):
        res = [c.step(lam) for c in clients]
        grads = [g for _, g in res]
        soft_g = float(np.abs(sum(wk * g for wk, g in zip(w, grads))).max()) if lam.size else 0.0
        soft_l = (
            max(
                (float(np.abs(c.p_k * c._smooth_and_grads(lam, c.mu)[2]).max()) for c in clients),
                default=0.0,
            )
            if clients[0].num_local
            else 0.0
        )
        train = ff.fairness_gap(
            criterion,
            np.stack(
                [
                    ff.expected_counts(d.y_train, rule(c, lam), d.a_train, A)
                    for c, d in zip(clients, data)
                ]
            ),
            expected=True,
        )
        test_counts = []
        for c, d, (_, e_te), u in zip(clients, data, etas, draws):
            if conf["output"] == "argmax":
                pred = c.predict(lam, e_te, d.a_test)
            else:
                pred = c.predict(lam, e_te, d.a_test, u=u)
            test_counts.append(ff.expected_counts(d.y_test, np.eye(m)[pred], d.a_test, A))
        held = ff.fairness_gap(criterion, np.stack(test_counts), expected=True)
        accepted = True
        if lam.size and conf["solver"] == "newton":
            value = sum(wk * c.last_value for wk, c in zip(w, clients))
            hess = sum(wk * c.dual_hessian(lam) for wk, c in zip(w, clients))
            grad = sum(wk * g for wk, g in zip(w, grads))
            cand = lam
            state, lam = ff.dual_newton_step(state, lam, value, grad, hess, xi=xi, bound=5.0)
            accepted = bool(np.array_equal(state.lam, cand))
        elif lam.size:
            lam_before = lam
            lam = ff.server_lambda_step(lam, grads, w, 0.6, xi, 5.0)
            cand = lam_before
        else:
            cand = lam
        rows.append(
            {
                "round": t + 1,
                "lambda_l1": float(np.abs(cand).sum()),
                "accepted": accepted,
                "smoothed_g": soft_g,
                "smoothed_l": soft_l,
                "train_g": train["global"],
                "train_l": train["local_max"],
                "heldout_g": held["global"],
                "heldout_l": held["local_max"],
                "acc": held["accuracy"],
            }
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="bank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--criterion", default="dp", choices=("dp", "eop", "eo"))
    p.add_argument("--scope", default="both", choices=("global", "local", "both"))
    p.add_argument("--xi", type=float, default=0.01)
    p.add_argument("--config", nargs="*", default=["paper", "fedrec"], choices=list(CONFIGS))
    p.add_argument("--every", type=int, default=1, help="print rounds 0-3, every n-th, last")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model, data = fedavg_model(args.dataset, args.seed, Path(tmp) / "fedavg")
    print(
        f"## {args.dataset}, seed {args.seed}, {args.criterion}, scope {args.scope}, "
        f"xi = {args.xi}\n"
    )
    for name in args.config:
        rows = replay(model, data, args.criterion, args.scope, args.xi, CONFIGS[name], args.seed)
        print(f"### config {name}: {CONFIGS[name]}\n")
        print(
            "| round | \\|λ\\|₁ | accepted | smoothed D_g | smoothed D_l | deployed train D_g | "
            "deployed train D_l | held-out D_g | held-out D_l | acc % |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            if not (r["round"] <= 3 or r["round"] % args.every == 0 or r is rows[-1]):
                continue
            print(
                f"| {r['round']} | {r['lambda_l1']:.4f} | {'yes' if r['accepted'] else 'no'} | "
                f"{r['smoothed_g']:.4f} | {r['smoothed_l']:.4f} | {r['train_g']:.4f} | "
                f"{r['train_l']:.4f} | {r['heldout_g']:.4f} | {r['heldout_l']:.4f} | "
                f"{100 * r['acc']:.2f} |"
            )
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
