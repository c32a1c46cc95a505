"""Client halves of ``fedfact-post`` / ``local-post`` and ``fedfact-in`` (see
:mod:`fedrec.strategies.fedfact`; messages and state fields in :mod:`fedrec.specs.fedfact`,
the math in :mod:`fedrec.algorithms.fedfact`).

What leaves a client:

- on top of :class:`~fedrec.clients.classification.ClassifierClient` (handshake label x
  group counts, FedAvg weights and example counts, test confusion counts per group);
- ``fedfact-post``, in a calibration round (``query.fedfact_post``): grad_lambda (U_g =
  |A| m numbers for DP/EOP, 2 |A| m for EO), the value of its dual objective, the U_g x
  U_g Hessian (server solver newton), the expected [group, label, prediction] counts
  of its rule on its train rows (|A| m^2 numbers: what the test evaluation already sends,
  for the train rows), the L1 norm of mu_k and its example count;
- ``fedfact-in``, in a train round: the trained copy of the shared model theta, its
  example count, the client's contributions sum_a <D^g_u, C^{a,k}(h_k)> to the global
  constraint values (U_g numbers; the server subtracts xi_g once), the ensemble weight
  w_k, the L1 norm of mu_k, the mean training loss and ``dl-mix-max`` (the largest
  |local constraint value| of its deployed mixture, a logged diagnostic).

The local dual mu_k and (fedfact-in) the private model phi_k never leave the client.
grad_lambda and the constraint contributions reveal group-conditional prediction rates
of the client (as FairFed and LoGoFair messages do); add secure aggregation or DP noise
if that matters.
"""

from __future__ import annotations

import numpy as np
import torch

from fedrec.algorithms.calibration import GroupCalibrator
from fedrec.algorithms.fedfact import (
    PostProcessingClient,
    calibration_matrix,
    confusion_from_predictions,
    constraint_values,
    cost_sensitive_loss,
    dual_prox_step,
    expected_counts,
    global_constraints,
    local_constraints,
    shift_positive,
)
from fedrec.clients.classification import ClassifierClient, loss_sum
from fedrec.models import get_weights
from fedrec.seeding import derive_seed
from fedrec.specs import fedavg as base_spec
from fedrec.specs import fedfact as spec


class FedFactPostClient(ClassifierClient):
    """fedfact-post / local-post: the local dual mu_k lives in the client's state. In a
    calibration round the client scores its training rows with the frozen global model
    (eta_hat, re-calibrated per group on those rows for eop/eo), solves for mu_k and
    returns the value, gradient (and Hessian) of its dual objective in lambda plus the
    expected counts of its rule on its train rows; in a calibrated evaluation it solves
    mu_k for the deployed lambda and predicts on its test rows with the randomized rule
    (one seeded uniform per row) or the argmax."""

    def _scores(
        self, weights, cfg: spec.PostConfig, test: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(eta on the train rows, eta on the test rows if ``test``), re-calibrated per
        group on the train rows if configured."""
        d = self.data
        eta_tr = self.predict(weights, d.X_train)
        eta_te = self.predict(weights, d.X_test) if test else None
        if cfg.recalibrate:
            cal = GroupCalibrator().fit(eta_tr, d.y_train, d.a_train, d.num_groups)
            eta_tr = cal.apply(eta_tr, d.a_train)
            eta_te = None if eta_te is None else cal.apply(eta_te, d.a_test)
        return eta_tr, eta_te

    def _post(self, eta_train: np.ndarray, cfg: spec.PostConfig) -> PostProcessingClient:
        d = self.data
        return PostProcessingClient(
            eta=eta_train,
            a=d.a_train,
            own_counts=d.counts("train").T,
            pooled_counts=cfg.pooled,
            criterion=cfg.criterion,
            scope=cfg.scope,
            xi_g=cfg.xi_global,
            xi_k=cfg.xi_local,
            bound=cfg.dual_bound,
            beta=cfg.temperature,
            lr=cfg.local_lr,
            local_steps=cfg.local_steps,
            mu=self.state.get(spec.POST_MU),
            inner=cfg.inner_solver,
            smoothing=cfg.smoothing,
        )

    @staticmethod
    def _rule_proba(post: PostProcessingClient, cfg: spec.PostConfig, lam, eta=None, a=None):
        """Class probabilities of the deployed rule (one-hot for the argmax output)."""
        if cfg.output == "argmax":
            pred = post.predict(lam, eta, a)
            return np.eye(post.own_counts.shape[1])[pred]
        return post.proba(lam, eta, a)

    def query(self, action, server_round, weights, config):
        if action != spec.POST:
            return super().query(action, server_round, weights, config)
        cfg = spec.unpack_post(config)
        eta_tr, _ = self._scores(weights, cfg)
        post = self._post(eta_tr, cfg)
        mu, grad = post.step(cfg.lam)
        if mu.size:
            self.state[spec.POST_MU] = mu
        d = self.data
        train_counts = expected_counts(
            d.y_train, self._rule_proba(post, cfg, cfg.lam), d.a_train, d.num_groups
        )
        out = {
            spec.GRAD_LAM: spec.pack_duals(grad),
            spec.DUAL_VALUE: float(post.last_value),
            spec.TRAIN_COUNTS: train_counts.ravel(),
            base_spec.NUM_EXAMPLES: len(self.data.y_train),
            spec.MU_L1: float(np.abs(mu).sum()) if mu.size else 0.0,
        }
        if cfg.want_hessian and grad.size:
            out[spec.HESS_LAM] = post.dual_hessian(cfg.lam).ravel()
        return None, out

    def evaluate(self, server_round, weights, config):
        if not spec.is_calibrated(config):
            return super().evaluate(server_round, weights, config)
        cfg = spec.unpack_post(config)
        d = self.data
        eta_tr, eta_te = self._scores(weights, cfg, test=True)
        assert eta_te is not None
        post = self._post(eta_tr, cfg)
        if cfg.inner_solver == "lbfgs" and post.num_local:
            post.step(cfg.lam)  # mu_k for the deployed lambda (the stored one is a warm start)
        if cfg.output == "randomized":
            u = np.random.default_rng(
                derive_seed(self.cfg.seed, "fedfact-draw", self.client_id)
            ).random(len(d.y_test))
            pred = post.predict(cfg.lam, eta_te, d.a_test, u=u)
        else:
            pred = post.predict(cfg.lam, eta_te, d.a_test)
        return self.evaluation_reply(pred, loss_sum(eta_te, d.y_test), config)


class FedFactInClient(ClassifierClient):
    """fedfact-in (Algorithm 1, fedfact.md §6.2): cost-sensitive training of the shared
    model theta and the private model phi_k, ensembled with the private weight w_k."""

    def _phi_weights(self, theta):
        phi = spec.load_phi(self.state)
        return phi if phi is not None else [w.copy() for w in theta]

    def _ensemble(self, theta, phi, w, X):
        return w * self.predict(theta, X) + (1.0 - w) * self.predict(phi, X)

    def fit(self, server_round, weights, config):
        d = self.data
        cfg = spec.unpack_in(config)
        pooled = cfg.pooled
        own = d.counts("train").T
        A, m = own.shape[0], own.shape[1]
        empty = np.zeros((0, A, m, m))
        Dg = (
            global_constraints(cfg.criterion, own, pooled)
            if cfg.scope in ("global", "both")
            else empty
        )
        Dl = local_constraints(cfg.criterion, own) if cfg.scope in ("local", "both") else empty
        lam = cfg.lam
        mu = np.asarray(self.state.get(spec.IN_MU, np.zeros(Dl.shape[0])), dtype=np.float64)
        w = float(self.state.get(spec.IN_W, np.array([0.5]))[0])
        phi = self._phi_weights(weights)
        # 2. ensemble classifier h_k^t and 3. cost matrices with the current duals
        f_ens = self._ensemble(weights, phi, w, d.X_train)
        h = f_ens.argmax(axis=1)
        w_t = w
        M = calibration_matrix(own, pooled, Dg, lam, Dl, mu)
        Mbar = shift_positive(M)
        # 4. exponentiated-gradient update of the ensemble weight (2 experts)
        with torch.no_grad():

            def loss(ws):
                logits = torch.log(torch.as_tensor(self.predict(ws, d.X_train)).clamp_min(1e-12))
                return float(cost_sensitive_loss(logits, d.y_train, d.a_train, Mbar))

            l_theta, l_phi = loss(weights), loss(phi)
        ratio = (1.0 - w) / w * np.exp(-cfg.eta_w * (l_phi - l_theta))
        w = float(np.clip(1.0 / (1.0 + ratio), 1e-3, 1.0 - 1e-3))
        # 5. constraint values of h on the local data; local dual ascent (signed, prox)
        C = confusion_from_predictions(d.y_train, h, d.a_train, A, m)
        dg = constraint_values(Dg, C) if Dg.shape[0] else np.zeros(0)
        dl = constraint_values(Dl, C) if Dl.shape[0] else np.zeros(0)
        # h^t is what the duals measure this round: keep it for the deployed mixture
        spec.save_snapshot(
            self.state,
            server_round % cfg.history,
            spec.Snapshot(server_round, [x.copy() for x in weights], phi, w_t, dl),
        )
        dl_mix = (
            np.mean([s.dl for s in spec.load_snapshots(self.state, cfg.history)], axis=0)
            if dl.size
            else np.zeros(0)
        )
        if Dl.shape[0]:
            # step scaled by the smallest group share p_{a,k} = n_k[a]/N of this client: mu
            # enters M(a,k) as mu/p_{a,k}, so an unscaled step moves the costs of a small
            # group by O(1) per round and the hard classifier oscillates (measured)
            sizes = own.sum(axis=1)
            p_min = sizes[sizes > 0].min() / pooled.sum()
            mu = dual_prox_step(mu, -dl, cfg.dual_lr * p_min, cfg.xi_local, cfg.dual_bound)
            self.state[spec.IN_MU] = mu
        # 6. local SGD on theta and phi with the soft targets Mbar[a_i, y_i, :]
        targets = np.asarray(Mbar)[d.a_train, d.y_train]
        theta_m, phi_m = self.model(weights), self.model(phi)
        res = self.train_model(theta_m, server_round, config, soft_targets=targets)
        self.train_model(phi_m, server_round, config, soft_targets=targets, seed_offset=1)
        spec.save_phi(self.state, get_weights(phi_m))
        self.state[spec.IN_W] = np.array([w])
        return get_weights(theta_m), {
            base_spec.NUM_EXAMPLES: res.num_examples,
            base_spec.TRAIN_LOSS: res.loss,
            spec.DG_VALUES: spec.pack_duals(dg),
            spec.W_ENSEMBLE: w,
            spec.MU_L1: float(np.abs(mu).sum()) if mu.size else 0.0,
            spec.DL_MIX_MAX: float(np.abs(dl_mix).max()) if dl_mix.size else 0.0,
        }

    def evaluate(self, server_round, weights, config):
        """The deployed classifier: for each test row, one of the stored round
        classifiers h^t (the last N_h the duals measured), drawn uniformly with one
        seeded uniform per row; attribute-blind at inference."""
        d = self.data
        snaps = spec.load_snapshots(self.state)
        if not snaps:
            return super().evaluate(server_round, weights, config)
        probas = [self._ensemble(s.theta, s.phi, s.w, d.X_test) for s in snaps]
        u = np.random.default_rng(derive_seed(self.cfg.seed, "fedfact-in-draw", self.client_id))
        pick = np.minimum((u.random(len(d.y_test)) * len(snaps)).astype(np.int64), len(snaps) - 1)
        preds = np.stack([p.argmax(axis=1) for p in probas])
        pred = preds[pick, np.arange(len(d.y_test))]
        return self.evaluation_reply(pred, loss_sum(np.mean(probas, axis=0), d.y_test), config)
