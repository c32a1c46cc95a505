"""Client half of ``fedfact-post`` / ``local-post`` (see fedrec.strategies.fedfact).

The client keeps its local dual mu_k in its node state (``fedfact-mu``); it never
leaves. In a calibration round it scores its training rows with the frozen global
model (eta_hat), runs R proximal steps on mu_k and returns grad_lambda. In
evaluation it predicts argmax_j (M(a,k)^T eta_hat(x))_j on its test rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrec.algorithms.fedfact import PostProcessingClient
from fedrec.clients.classification import ClassifierClient


class FedFactPostClient(ClassifierClient):
    MU = "fedfact-mu"

    def _post(self, weights, config: dict[str, Any], rows: str = "train") -> PostProcessingClient:
        d = self.data
        A = int(config["num-groups"])
        pooled = np.asarray(config["pooled-counts"], dtype=np.int64).reshape(A, -1)
        own = self.data.counts("train").T  # (A, m)
        X, a = (d.X_train, d.a_train) if rows == "train" else (d.X_test, d.a_test)
        return PostProcessingClient(
            eta=self.predict(weights, X), a=a, own_counts=own, pooled_counts=pooled,
            criterion=str(config["criterion"]), scope=str(config["scope"]),
            xi_g=float(config["xi-global"]), xi_k=float(config["xi-local"]),
            bound=float(config["dual-bound"]), beta=float(config["temperature"]),
            lr=float(config["local-lr"]), local_steps=int(config["local-steps"]),
            mu=self.state.get(self.MU), inner=str(config.get("inner-solver", "prox")))

    def query(self, action, server_round, weights, config):
        if action != "fedfact_post":
            return super().query(action, server_round, weights, config)
        post = self._post(weights, config)
        mu, grad = post.step(np.asarray(config.get("lam", []), dtype=np.float64))
        if mu.size:
            self.state[self.MU] = mu
        return None, {"grad-lam": grad.tolist() if grad.size else [0.0],
                      "num-examples": len(self.data.y_train),
                      "mu-l1": float(np.abs(mu).sum()) if mu.size else 0.0}

    def evaluate(self, server_round, weights, config):
        if not config.get("calibrated"):
            return super().evaluate(server_round, weights, config)
        post = self._post(weights, config, rows="test")
        lam = np.asarray(config.get("lam", []), dtype=np.float64)
        pred = post.predict(lam)
        proba = post.eta
        loss_sum = float(-np.log(np.clip(proba[np.arange(len(pred)), self.data.y_test],
                                         1e-12, 1.0)).sum())
        return self.evaluation_reply(pred, loss_sum, config)


class FedFactInClient(ClassifierClient):
    """Client half of ``fedfact-in`` (Algorithm 1, fedfact.md §6.2).

    Private state (never sent): the local model phi_k (``fedfact-in-phi.*``), the local
    dual mu_k (``fedfact-in-mu``) and the ensemble weight w_k (``fedfact-in-w``).
    Sent: the trained copy of the shared model theta, its example count, and the
    client's contributions sum_a <D^g_u, C^{a,k}(h_k)> to the global constraint values
    (``dg-values``, U_g numbers; the server subtracts xi_g once).
    """

    PHI, MU, W = "fedfact-in-phi.", "fedfact-in-mu", "fedfact-in-w"

    def _phi_weights(self, theta):
        keys = sorted((k for k in self.state if k.startswith(self.PHI)),
                      key=lambda k: int(k[len(self.PHI):]))
        return [self.state[k] for k in keys] if keys else [w.copy() for w in theta]

    def _ensemble(self, theta, phi, w, X):
        return w * self.predict(theta, X) + (1.0 - w) * self.predict(phi, X)

    def fit(self, server_round, weights, config):
        import torch

        from fedrec.algorithms.fedfact import (calibration_matrix, confusion_from_predictions,
                                               constraint_values, cost_sensitive_loss,
                                               dual_prox_step, global_constraints,
                                               local_constraints, shift_positive)
        from fedrec.models import get_weights

        d = self.data
        A = int(config["num-groups"])
        pooled = np.asarray(config["pooled-counts"], dtype=np.int64).reshape(A, -1)
        own = d.counts("train").T
        m = own.shape[1]
        scope, crit = str(config["scope"]), str(config["criterion"])
        empty = np.zeros((0, A, m, m))
        Dg = global_constraints(crit, own, pooled) if scope in ("global", "both") else empty
        Dl = local_constraints(crit, own) if scope in ("local", "both") else empty
        lam = np.asarray(config.get("lam", []), dtype=np.float64)
        mu = np.asarray(self.state.get(self.MU, np.zeros(Dl.shape[0])), dtype=np.float64)
        w = float(self.state.get(self.W, np.array([0.5]))[0])
        phi = self._phi_weights(weights)
        # 2. ensemble classifier h_k^t and 3. cost matrices with the current duals
        f_ens = self._ensemble(weights, phi, w, d.X_train)
        h = f_ens.argmax(axis=1)
        M = calibration_matrix(own, pooled, Dg, lam, Dl, mu)
        Mbar = shift_positive(M)
        # 4. exponentiated-gradient update of the ensemble weight (2 experts)
        with torch.no_grad():
            def loss(ws):
                logits = torch.log(torch.as_tensor(self.predict(ws, d.X_train)).clamp_min(1e-12))
                return float(cost_sensitive_loss(logits, d.y_train, d.a_train, Mbar))
            l_theta, l_phi = loss(weights), loss(phi)
        eta_w = float(config["eta-w"])
        ratio = (1.0 - w) / w * np.exp(-eta_w * (l_phi - l_theta))
        w = float(np.clip(1.0 / (1.0 + ratio), 1e-3, 1.0 - 1e-3))
        # 5. constraint values of h on the local data; local dual ascent (signed, prox)
        C = confusion_from_predictions(d.y_train, h, d.a_train, A, m)
        dg = constraint_values(Dg, C) if Dg.shape[0] else np.zeros(0)
        if Dl.shape[0]:
            # step scaled by the smallest group share p_{a,k} = n_k[a]/N of this client: mu
            # enters M(a,k) as mu/p_{a,k}, so an unscaled step moves the costs of a small
            # group by O(1) per round and the hard classifier oscillates (measured)
            sizes = own.sum(axis=1)
            p_min = sizes[sizes > 0].min() / pooled.sum()
            mu = dual_prox_step(mu, -constraint_values(Dl, C), float(config["dual-lr"]) * p_min,
                                float(config["xi-local"]), float(config["dual-bound"]))
            self.state[self.MU] = mu
        # 6. local SGD on theta and phi with the soft targets Mbar[a_i, y_i, :]
        targets = np.asarray(Mbar)[d.a_train, d.y_train]
        theta_m, phi_m = self.model(weights), self.model(phi)
        res = self.train_model(theta_m, server_round, config, soft_targets=targets)
        self.train_model(phi_m, server_round, config, soft_targets=targets, seed_offset=1)
        for i, arr in enumerate(get_weights(phi_m)):
            self.state[f"{self.PHI}{i}"] = arr
        self.state[self.W] = np.array([w])
        return get_weights(theta_m), {
            "num-examples": res.num_examples, "train-loss": res.loss,
            "dg-values": dg.tolist() if dg.size else [0.0], "w-ensemble": w,
            "mu-l1": float(np.abs(mu).sum()) if mu.size else 0.0}

    def evaluate(self, server_round, weights, config):
        d = self.data
        if not any(k.startswith(self.PHI) for k in self.state):
            return super().evaluate(server_round, weights, config)
        w = float(self.state[self.W][0])
        proba = self._ensemble(weights, self._phi_weights(weights), w, d.X_test)
        pred = proba.argmax(axis=1)  # attribute-blind at inference
        loss_sum = float(-np.log(np.clip(proba[np.arange(len(pred)), d.y_test], 1e-12,
                                         1.0)).sum())
        return self.evaluation_reply(pred, loss_sum, config)
