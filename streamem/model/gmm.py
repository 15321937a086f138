"""``OnlineGMM``: a Gaussian mixture fitted to an endless stream by stepwise online EM."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import numpy as np

from streamem.model import collapse, kernel, matching, moves, persistence, point
from streamem.model.anomaly import FIT_POOR_FACTOR
from streamem.model.covariance import KINDS, CovarianceKind
from streamem.model.delta import (
    StatsDelta,
    compute_delta,
    flagged_capacity,
    inlier_capacity,
    warmup_delta,
)
from streamem.model.estimator import Estimator, not_fitted, sklearn_tags
from streamem.model.params import (
    Params,
    centred,
    e_step,
    estimate_weighted_log_prob,
    hard_responsibilities,
    make_params,
    params_from_statistics,
    refresh_params,
    row_argmax,
)
from streamem.model.results import (
    NO_FLAG,
    BatchResult,
    ModelRejected,
    concatenate_results,
    empty_result,
    make_result,
)
from streamem.model.schedule import batch_schedule, floor_for_halflife
from streamem.model.seeding import fit_batch
from streamem.model.statistics import SufficientStatistics, batch_statistics
from streamem.model.tail import DRIFT_SHARE, Tail, warm_up_floor
from streamem.model.validation import (
    check_feature_names,
    check_hyperparameters,
    check_points,
    feature_names,
    max_abs_value,
)

#: Points between two collapse checks (and anomaly-threshold refreshes).
CHECK_EVERY = 2048
#: Half-life, in points, of the recent-usage and flagged-share averages.
RECENT_HALFLIFE = 1000.0
#: What the recent averages keep over one point (as ``_track_recent``).
RECENT_KEEP = math.exp(-math.log(2.0) * 1 / RECENT_HALFLIFE)
HISTORY_LENGTH = 100
#: Seeding restarts of the warm-up fit; the best on the buffer is kept.
WARMUP_RESTARTS = 5
#: Points per online-EM step in ``fit``'s passes.
FIT_BATCH = 256
RESET_REASONS = collapse.RESET_REASONS
NOT_FITTED = "this OnlineGMM is not fitted yet: call fit or partial_fit with some points first"


#: The forgetting half-life is at least this many points per free parameter of the mixture: an
#: estimate from n effective points costs about (parameters)/(2n) nats per point, so a larger
#: model must average over more points to match batch EM (about 0.007 nats/point here).
POINTS_PER_PARAMETER = 25.0
#: Checks (of ``CHECK_EVERY`` points) before the first try of the moves (``_try_move``) while
#: the model fits, and the longest wait between two tries: a try costs about as much as a few
#: checks' points, so a model that fits pays next to nothing for them. While ``fit_poor_``,
#: tries wait at most ``MOVE_WAIT_POOR`` checks.
MOVE_WAIT_START = 8
#: A try the kurtosis screen stops (every component looks Gaussian) grows the wait this many
#: times; one that found no significant move, twice.
SCREENED_GROWTH = 8
MOVE_WAIT_FIT = 4096
MOVE_WAIT_POOR = 64


class OnlineGMM(Estimator):
    """Gaussian mixture fitted one pass over a stream by stepwise online EM.

    A scikit-learn density estimator (``get_params``/``set_params``, ``fit``, ``score``,
    ``clone``, pipelines, grid search, pickling) whose main use is ``partial_fit`` on a stream.

    Parameters
    ----------
    n_components : K.
    covariance_type : ``"full"``, ``"diag"`` or ``"spherical"``.
    reg_covar : added to every covariance's diagonal (the covariance floor).
    learning_decay, learning_offset : κ and τ0 of the step size γ_t = (t + τ0)^−κ per point.
    halflife : points; the step never falls below the size at which old statistics halve every
        ``halflife`` points, so the model keeps up with drift.
    warmup : points buffered to initialise (k-means++ and batch EM); default max(1000, 10·K·d).
    init : ``"kmeans++"`` or ``"random"`` seeding of the warm-up fit.
    assignment : ``"soft"`` (EM) or ``"hard"`` (classification EM, the k-means limit).
    anomaly_rate : share of the model's own inliers flagged as anomalies.
    update_on_anomaly : whether flagged points always update the statistics; by default they do
        not while flags are as rare as anomalies should be (see ``protecting_``).
    random_state : seed of the seeding; ``None`` draws one when learning starts (kept in
        checkpoints).
    max_iter, tol : ``fit`` only: at most ``max_iter`` passes over its data, stopping once the
        mean log-likelihood per point changes by less than ``tol`` between passes.

    Hyperparameters are checked when learning starts (``fit``, the first ``partial_fit``, or
    the first one after ``set_params``), as scikit-learn requires. ``n_components`` and
    ``covariance_type`` describe the learning state: changing them takes a new ``fit``.

    Warm-up: until ``warmup`` points have arrived, points are answered by a provisional model
    fitted to the warm-up buffer (refitted each time the buffer doubles, and including the points
    it answers); they are marked ``warmup`` and never flagged. The full buffer then initialises
    the mixture and later points are answered prequentially.

    Examples
    --------
    >>> from streamem.synthetic import Mixture
    >>> X, _ = Mixture.random(3, 2, random_state=0).sample(3000, random_state=1)
    >>> gmm = OnlineGMM(3, warmup=500, random_state=0)
    >>> res = gmm.partial_fit(X)
    >>> res.responsibilities.shape, gmm.n_seen_, round(float(gmm.weights_.sum()), 6)
    ((3000, 3), 3000, 1.0)
    """

    # What a model that has learned nothing reads as. Class attributes, so that ``__init__``
    # stores parameters only; ``_begin`` gives each model its own learning state.
    n_seen_ = 0
    version_ = 0
    anomaly_threshold_ = -math.inf
    learning_rate_ = 0.0
    # Read-only stand-ins for the dict and list that ``_begin`` creates.
    resets_: dict[str, int] = MappingProxyType(dict.fromkeys(RESET_REASONS, 0))  # type: ignore
    collapse_history_: list[tuple[int, int, str]] = ()  # type: ignore[assignment]
    stats_: SufficientStatistics | None = None
    _params: Params | None = None
    _n_features: int | None = None
    _conditioning: tuple[int, np.ndarray] | None = None
    _drift: list[float] | np.ndarray | None = None  # (K,) see ``point.blend``; None: all 0
    _checked = False  # hyperparameters checked since the last set_params
    _undo: list[tuple[np.ndarray, Any, np.ndarray]] | None = None  # see ``_snapshot``
    _tail = Tail()  # read by the metrics before the first batch; ``_begin`` gives each its own

    def __init__(
        self,
        n_components: int = 8,
        covariance_type: str = "full",
        reg_covar: float = 1e-6,
        learning_decay: float = 1.0,
        learning_offset: float = 10.0,
        halflife: float | None = 10_000.0,
        warmup: int | None = None,
        init: str = "kmeans++",
        assignment: str = "soft",
        anomaly_rate: float = 1e-3,
        update_on_anomaly: bool = False,
        random_state: int | None = None,
        max_iter: int = 10,
        tol: float = 1e-3,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.learning_decay = learning_decay
        self.learning_offset = learning_offset
        self.halflife = halflife
        self.warmup = warmup
        self.init = init
        self.assignment = assignment
        self.anomaly_rate = anomaly_rate
        self.update_on_anomaly = update_on_anomaly
        self.random_state = random_state
        self.max_iter = max_iter
        self.tol = tol

    # ------------------------------------------------------------------ learning state
    def _params_changed(self) -> None:
        self._checked = False

    def _ready(self, restart: bool = False) -> None:
        """Check the hyperparameters if they changed; create the learning state if needed."""
        started = "n_seen_" in vars(self)
        if not self._checked or restart:
            check_hyperparameters(self.get_params())
            if started and not restart and not self._state_fits():
                raise ValueError("n_components or covariance_type changed since this model "
                                 "started learning; call fit to start over")
            self._checked = True
        if restart or not started:
            self._begin()

    def _state_fits(self) -> bool:
        covs = None if self._params is None else self._params.covariances
        return len(self._usage) == self.n_components and (
            covs is None or covs.ndim == len(self._kind.scatter_shape(1, 1)))

    def _begin(self) -> None:
        """A fresh learning state: nothing seen, a seed drawn from ``random_state``."""
        seed: Any = self.random_state
        if seed is None:
            seed = np.random.SeedSequence().entropy
        self._state: dict[str, Any] = {"seed": int(seed)}  # type: ignore[arg-type]
        self._n_features = None
        self._set_feature_names(None)
        self.n_seen_ = 0
        self.version_ = 0
        self.resets_ = dict.fromkeys(RESET_REASONS, 0)
        self.collapse_history_ = []
        self.anomaly_threshold_ = -np.inf
        self.learning_rate_ = 0.0
        self.stats_ = None
        self._params = None
        self._buffer: list[np.ndarray] = []
        self._rewarm: list[np.ndarray] = []
        self._provisional_size = 0
        self._n_steps = 0
        self._sum_sq_weights = 0.0
        self._since_check = 0
        self._usage = np.zeros(self.n_components)
        self._tail = Tail()
        self._flagged = np.empty((0, 0))
        self._flagged_at = np.empty(0, dtype=np.int64)
        self._conditioning = None
        self._drift = None
        self._settled: tuple[np.ndarray, np.ndarray] | None = None
        self._recent = np.empty((0, 0))
        self._recent_n = 0
        self._move_wait = MOVE_WAIT_START
        self._move_backoff = MOVE_WAIT_START

    @property
    def _kind(self) -> CovarianceKind:
        return KINDS[self.covariance_type]

    # ------------------------------------------------------------------ scikit-learn surface
    def __sklearn_tags__(self) -> Any:
        return sklearn_tags("density_estimator")

    def __sklearn_is_fitted__(self) -> bool:
        return self._params is not None

    @property
    def n_features_in_(self) -> int:
        """d, fixed by the first points learned from."""
        if self._n_features is None:
            raise not_fitted(NOT_FITTED)
        return self._n_features

    @n_features_in_.setter
    def n_features_in_(self, value: int | None) -> None:
        self._n_features = None if value is None else int(value)

    def fit(self, X: Any, y: Any = None) -> OnlineGMM:
        """Fit to a finite data set X (n, d) from scratch; returns ``self``. ``y`` is ignored.

        Everything learned before is forgotten. The first min(n, ``warmup_``) points initialise
        the mixture as a stream's warm-up does (seeding with restarts, then batch EM); the
        remaining points are then streamed through stepwise online EM in batches of
        ``FIT_BATCH``, and so are all n points on each further pass, up to ``max_iter``
        passes in all. It stops early (``converged_``) once the mean log-likelihood of X
        changes by less than ``tol`` between passes; ``n_iter_`` counts the passes made.
        """
        names = feature_names(X)
        X = check_points(X, None)
        self._ready(restart=True)
        self._n_features = X.shape[1]
        self._set_feature_names(names)
        head = min(len(X), self.warmup_)
        self._initialise(X[:head])
        self.n_seen_ = head
        rest, previous = X[head:], -np.inf
        self.n_iter_, self.converged_ = 0, False
        while self.n_iter_ < self.max_iter:
            for i in range(0, len(rest), FIT_BATCH):
                self._online_step(rest[i : i + FIT_BATCH], None)
            self.n_iter_ += 1
            current = float(e_step(self._kind, self._fitted(), X)[1].mean())  # X is checked
            if abs(current - previous) < self.tol:
                self.converged_ = True
                break
            rest, previous = X, current
        return self

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """``fit(X)``, then the most responsible component of each point of X, (n,)."""
        return self.fit(X).predict(X)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on X (lower is better)."""
        n = len(self._points(X))
        return -2.0 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X: Any) -> float:
        """Akaike information criterion on X (lower is better)."""
        return -2.0 * self.score(X) * len(self._points(X)) + 2.0 * self._n_parameters()

    def _n_parameters(self) -> int:
        """Free parameters: covariances, means and K − 1 weights."""
        K, d = self.n_components, self.n_features_in_
        return int(self._kind.n_parameters(K, d)) + K * d + K - 1

    @classmethod
    def from_params(
        cls,
        weights: np.ndarray,
        means: np.ndarray,
        covariances: np.ndarray,
        covariance_type: str = "full",
        **kwargs: Any,
    ) -> OnlineGMM:
        """A ready model with the given parameters, as if it had seen ``warmup`` points.

        ``covariances`` are taken as the model's covariances, floor included (as
        ``covariances_`` returns them), so ``from_params`` round-trips a model's parameters.
        """
        weights = np.asarray(weights, dtype=np.float64)
        means = np.atleast_2d(np.asarray(means, dtype=np.float64))
        model = cls(len(weights), covariance_type, **kwargs)
        model._ready()
        covs = np.array(covariances, dtype=np.float64)
        d = means.shape[1]
        # The given covariances already include the floor, as ``covariances_`` do.
        if covs.ndim == 3:
            covs[:, np.arange(d), np.arange(d)] -= model.reg_covar
        else:
            covs = covs - model.reg_covar
        nk = weights / weights.sum()
        shape = (-1,) + (1,) * (covs.ndim - 1)
        stats = SufficientStatistics(nk, means.copy(), nk.reshape(shape) * covs)
        model._n_features = means.shape[1]
        model._start(stats, model.warmup_)
        return model

    @property
    def initialized_(self) -> bool:
        return self.stats_ is not None

    @property
    def warmup_(self) -> int:
        """The resolved warm-up length, in points."""
        if self.warmup is not None:
            return int(self.warmup)
        d = self._n_features or 1
        return max(1000, 10 * self.n_components * d)

    @property
    def protecting_(self) -> bool:
        """Whether flagged points are kept out of the statistics right now.

        Only while flags stay as rare as scattered anomalies should make them (the recent flagged
        share at most max(2 %, 20 × ``anomaly_rate``)): when far more points are flagged, the model
        no longer fits the stream, and excluding them would narrow it further and flag still more.
        """
        return not self.update_on_anomaly and not self._flags_excessive()

    def _flags_excessive(self) -> bool:
        return self._tail.excessive(self.anomaly_rate)

    @property
    def drifting_(self) -> bool:
        """Whether so many recent points are flagged that the stream itself has changed.

        Then flagged points update the model, and the next ``warmup`` points refit it from
        scratch (counted as a ``drift`` reset). Smaller changes — one cluster moving, a new one
        appearing — are met by moving stranded components instead.
        """
        return self._tail.drifting

    @property
    def weights_(self) -> np.ndarray:
        return self._fitted().weights

    @property
    def means_(self) -> np.ndarray:
        return self._fitted().means

    @property
    def covariances_(self) -> np.ndarray:
        return self._fitted().covariances

    @property
    def precisions_cholesky_(self) -> np.ndarray:
        return self._fitted().precisions_chol

    @property
    def condition_numbers_(self) -> np.ndarray:
        """Each component's covariance condition number, (K,) (cached per version), at most
        1/ε ≈ 4.5e15: beyond, float64's eigenvalues cannot tell (features in very different
        units, a feature in bytes beside ratios, read that high)."""
        if self._conditioning is None or self._conditioning[0] != self.version_:
            var = self._kind.variances(self.covariances_)
            largest = var[:, -1]
            smallest = np.maximum(var[:, 0], largest * np.finfo(np.float64).eps)
            self._conditioning = (self.version_, largest / smallest)
        return self._conditioning[1]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Responsibilities (n, K) of each component for each point."""
        return self._e_step(X)[0]

    def predict(self, X: Any) -> np.ndarray:
        """The most responsible component of each point, (n,)."""
        params = self._fitted()
        X = self._points(X)
        if len(X) == 1:  # the most responsible is the most probable: no normalisation needed
            return np.array([point.weighted_log_prob(self._kind, params, X[0]).argmax()])
        return row_argmax(e_step(self._kind, params, X)[0])

    def score_samples(self, X: Any) -> np.ndarray:
        """log p(x) of each point, (n,)."""
        return self._e_step(X)[1]

    def _e_step(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """Responsibilities (n, K) and log p(x) (n,); one point takes ``point.e_step``."""
        params = self._fitted()
        X = self._points(X)
        one = point.e_step(self._kind, params, X[0]) if len(X) == 1 else None
        if one is not None:
            return one[0][None], np.array([one[1]])
        return e_step(self._kind, params, X)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per point of X (higher is better); ``y`` is ignored."""
        return float(self.score_samples(X).mean())

    def sample(
        self, n_samples: int = 1, random_state: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw points from the mixture; returns X (n, d) and their components (n,)."""
        params = self._fitted()
        rng = np.random.default_rng(random_state)
        d = params.means.shape[1]
        labels = rng.choice(self.n_components, size=n_samples, p=params.weights)
        chol = np.linalg.cholesky(self._kind.to_full(params.covariances, d))
        z = rng.standard_normal((n_samples, d))
        return params.means[labels] + np.einsum("nij,nj->ni", chol[labels], z), labels

    # ------------------------------------------------------------------ learning
    def partial_fit(
        self, X: Any, y: Any = None, *, learning_rate: float | None = None
    ) -> BatchResult:
        """Answer a batch (n, d) with the current parameters, then learn from it.

        Returns the answers (unlike scikit-learn's ``partial_fit``, which returns ``self``);
        ``y`` is ignored. ``learning_rate`` overrides the schedule with one step for the whole
        batch; ``1.0`` replaces the statistics with the batch's own (one exact batch M-step).
        """
        if learning_rate is not None and not 0.0 < learning_rate <= 1.0:
            raise ValueError(f"learning_rate must be in (0, 1], got {learning_rate!r}")
        if (learning_rate is None and self._checked and self.stats_ is not None
                and type(X) is np.ndarray and X.shape == (1, self._n_features)
                and X.dtype == np.float64 and "feature_names_in_" not in self.__dict__):
            done = self._learn_point(X)
            if done is not None:
                return done
        self._ready()
        n_features = self._n_features
        X = self._check(X)
        if len(X) == 0:
            empty = np.zeros(0, dtype=bool)
            return make_result(np.zeros((0, self.n_components)), np.zeros(0), empty, empty,
                           self.version_)
        saved = self._snapshot(len(X))
        saved["_n_features"] = n_features  # a refused first batch does not fix d
        if n_features is None:  # nor the feature names
            saved.pop("feature_names_in_", None)
        return self._all_or_nothing(saved, "batch", lambda: self._learn(X, learning_rate))

    def _all_or_nothing(self, saved: dict[str, Any], what: str,
                        learn: Callable[[], BatchResult]) -> BatchResult:
        """Run ``learn``; if it fails or leaves the state invalid, restore ``saved`` and raise
        :class:`ModelRejected` (numerical failures of any kind: nothing may be half-learned)."""
        try:
            result = learn()
            problem = self._invalid_state(result)
        except Exception as exc:
            self._restore(saved)
            raise ModelRejected(f"the model refused the {what} and is unchanged: {exc!r}") \
                from exc
        if problem:
            self._restore(saved)
            raise ModelRejected(f"the model refused the {what} and is unchanged: {problem}")
        del self._undo
        return result

    def _snapshot(self, n_points: int | None = None) -> dict[str, Any]:
        """The state a step of ``n_points`` points (``None``: any) may change, for ``_restore``.

        The attributes, by reference where the step replaces them (the statistics' arrays, the
        parameters, the trackers); copies of what it mutates in place: the containers, the
        tail's bookkeeping, and the statistics and usage when a collapse check may run (resets
        and moves change them in place). The ring of recent inliers is not copied: ``_remember``
        logs the rows it overwrites in ``_undo``, which ``_restore`` writes back.
        """
        saved = dict(self.__dict__)
        for name in ("_buffer", "_rewarm", "collapse_history_"):
            saved[name] = list(saved[name])
        saved["resets_"] = dict(self.resets_)
        saved["_tail"] = self._tail.copy()
        may_check = n_points is None or self._since_check + n_points >= CHECK_EVERY
        if may_check:
            saved["_usage"] = self._usage.copy()
        stats = self.stats_
        if stats is not None:
            saved["stats_"] = stats.copy() if may_check else SufficientStatistics(
                stats.nk, stats.means, stats.scatter)
        self._undo = []
        return saved

    def _restore(self, saved: dict[str, Any]) -> None:
        for ring, rows, old in reversed(self._undo or ()):
            ring[rows] = old
        self.__dict__.clear()
        self.__dict__.update(saved)

    def _invalid_state(self, result: BatchResult) -> str | None:
        """What is wrong with the state after an update (non-finite, not positive definite).

        An array's sum is finite when all its values are (one pass, no temporary); only a sum
        that is not (a non-finite value, or an overflow of finite ones) is looked at closely.
        """
        arrays = {"responsibilities": result.responsibilities}
        if self.stats_ is not None:
            arrays.update(nk=self.stats_.nk, means=self.stats_.means, scatter=self.stats_.scatter)
        if self._params is not None:  # a finite log det of the Cholesky factors: positive definite
            arrays.update(precisions_cholesky=self._params.precisions_chol,
                          log_det=self._params.log_det)
        for name, value in arrays.items():
            if not math.isfinite(np.add.reduce(value, axis=None)) and \
                    not np.isfinite(value).all():
                return f"{name} would not be finite"
        log_lik = result.log_likelihood
        if math.isnan(log_lik.sum()) and np.isnan(log_lik).any() \
                or math.isnan(self.anomaly_threshold_):
            return "log-likelihoods would be NaN"
        return None

    def _learn(self, X: np.ndarray, learning_rate: float | None) -> BatchResult:
        parts = []
        if not self.initialized_:
            head, X = X[: self.warmup_ - self._buffered()], X[self.warmup_ - self._buffered() :]
            if len(head):
                parts.append(self._warm_up(head))
        if len(X) or not parts:
            parts.append(self._online_step(X, learning_rate))
        return concatenate_results(parts)

    def _warm_up(self, X: np.ndarray) -> BatchResult:
        self._buffer.append(X.copy())
        buffered = np.concatenate(self._buffer)
        if len(buffered) >= self.warmup_:
            self._initialise(buffered)
        elif self._params is None or len(buffered) >= 2 * self._provisional_size:
            rng = np.random.default_rng([self._state["seed"], 1, len(buffered)])
            stats = fit_batch(buffered, self.n_components, self._kind, reg_covar=self.reg_covar,
                              init=self.init, hard=self.assignment == "hard", rng=rng,
                              max_iter=5)
            self._params = params_from_statistics(stats, self._kind, self.reg_covar)
            self._provisional_size = len(buffered)
        self.n_seen_ += len(X)
        resp, log_lik = e_step(self._kind, self._fitted(), X)
        ones = np.ones(len(X), dtype=bool)
        return make_result(resp, log_lik, ~ones, ones, self.version_)

    def restart_warm_up(self) -> None:
        """Forget the warm-up's points, and the width (and feature names) they fixed.

        For a stream whose first points had another width than the rest (a stray message
        before the real ones); only before the model is initialised. Counts (``n_seen_``,
        ``version_``) go on.
        """
        if self.initialized_:
            raise ValueError("the model is initialised: its width is final")
        self._buffer, self._params, self._provisional_size = [], None, 0
        self._n_features = None
        self._set_feature_names(None)

    def _initialise(self, buffered: np.ndarray) -> None:
        """The end of the warm-up: the mixture fitted to the buffered points (n, d)."""
        rng = np.random.default_rng([self._state["seed"], 0])
        stats = fit_batch(buffered, self.n_components, self._kind, reg_covar=self.reg_covar,
                          init=self.init, hard=self.assignment == "hard", rng=rng,
                          n_init=WARMUP_RESTARTS)
        self._buffer = []
        self._start(stats, len(buffered), buffered)

    def _start(self, stats: SufficientStatistics, n_points: int,
               points: np.ndarray | None = None) -> None:
        """Start stepwise EM from ``stats``, fitted to ``n_points`` (the warm-up ``points``)."""
        self.stats_ = stats
        self._n_steps = n_points
        self._sum_sq_weights = 1.0 / max(n_points, 1)
        self._usage = stats.nk.copy()
        self._tail.restart()
        self._recent_n = 0
        self._move_wait = self._move_backoff = MOVE_WAIT_START
        self._refresh(threshold=True)
        if points is not None:
            rng = np.random.default_rng([self._state["seed"], 4, self.resets_["drift"]])
            self._tail.early = warm_up_floor(
                points, self.n_components, self._kind, reg_covar=self.reg_covar,
                init=self.init, hard=self.assignment == "hard", anomaly_rate=self.anomaly_rate,
                rng=rng)
        self._remember_settled()

    def _online_step(self, X: np.ndarray, learning_rate: float | None) -> BatchResult:
        assert self.stats_ is not None and self._params is not None
        version, params = self.version_, self._params
        one = point.answer(self._kind, params, X[0]) if len(X) == 1 else None
        if one is not None:  # one point: the same answers in fewer numpy calls
            resp, log_lik = np.array([one[0]]), np.array([one[1]])
            Y = X - params.center
        else:
            Y = centred(X, params.center)
            resp, log_lik = e_step(self._kind, params, X, Y)
        anomaly = log_lik < self.anomaly_threshold_
        n_flagged = int(np.count_nonzero(anomaly))
        collecting, window = self._collecting(), self._tail.counted_window(self.anomaly_rate)
        if n_flagged and self.protecting_:
            kept = np.flatnonzero(~anomaly)  # take() is several times faster than a mask
            moved = self._update(Y.T.take(kept, axis=1).T, resp.T.take(kept, axis=1).T,
                                 learning_rate, one)
        else:
            moved = self._update(Y, resp, learning_rate, one)
        self._track_recent(X, resp, anomaly, n_flagged)
        self._tail.count_window(log_lik, window)
        if collecting and len(X):
            self._remember(X[~anomaly])
        if self.drifting_ or self._rewarm:
            self._collect_rewarm(X)
        self.n_seen_ += len(X)
        self._since_check += len(X)
        checked = self._since_check >= CHECK_EVERY
        if checked:
            self._since_check = 0
            self._reset_components()
            self._remember_settled()
        if one is None:
            self._refresh(threshold=checked)
            return make_result(resp, log_lik, self._tail.reported(anomaly, log_lik),
                           np.zeros(len(X), dtype=bool), version)
        rows: list[int] | None = None
        if not checked:  # the statistics changed by this point only
            rows = []
            if moved is not None:
                rows, self._drift = moved
        self._refresh(threshold=checked, rows=rows)
        label = int(resp[0].argmax())
        return BatchResult(np.array([label]), resp[0, label : label + 1], resp, log_lik,
                           self._tail.reported(anomaly, log_lik), np.zeros(1, dtype=bool),
                           version)

    def _learn_point(self, X: np.ndarray) -> BatchResult | None:
        """``partial_fit`` of one point X (1, d) in the common case, in few numpy calls.

        The common case: the model learns (initialised, soft assignment, no drift refit under
        way, the schedule's step), the point is valid and not flagged, and no collapse check is
        due. The step is ``_online_step``'s for that case, computed into new objects and
        committed only once it is valid: nothing to snapshot or roll back. ``None`` (nothing
        changed) in any other case, or on any failure: the general path then learns the point
        (and refuses it, if it must).
        """
        threshold, params, d = self.anomaly_threshold_, self._params, self._n_features
        assert self.stats_ is not None and params is not None and d is not None
        if (self._since_check + 1 >= CHECK_EVERY or self._rewarm or self.drifting_
                or self.assignment != "soft" or not math.isfinite(threshold)):
            return None
        kind = self._kind
        if (compiled := kernel.compiled(kind.name)) is not None:
            return self._learn_point_compiled(X, compiled)
        row, limit = X.tolist()[0], max_abs_value(d)
        if not (math.isfinite(sum(row)) and -limit <= min(row) and max(row) <= limit):
            return None
        try:
            found = point.answer(kind, params, X[0])
            if found is None or not found[1] >= threshold:
                return None
            resp, log_lik, dist, D = found
            decay, weight = point.step(self._n_steps, learning_decay=self.learning_decay,
                                       learning_offset=self.learning_offset,
                                       floor=self._step_floor())
            stats, rows, drift = point.blend(kind, self.stats_, D, [v * weight for v in resp],
                                             decay, dist, self._drift)
            params = refresh_params(stats, kind, self.reg_covar, params, rows)
            # Σ π_k μ_k is finite only if the weights, hence the masses, and the means are. A
            # factor LAPACK computed from a finite floored covariance is finite (its norm is
            # at most reg_covar^−½); its log det is checked all the same.
            total = (sum(params.center.tolist()) + sum(params.log_det.tolist())
                     + np.add.reduce(stats.scatter, axis=None))
        except Exception:  # the general path refuses the point, with the reason
            return None
        if not (math.isfinite(total) and math.isfinite(log_lik)):
            return None
        answered = np.array([resp])  # ``_track_recent``'s usage, the same arithmetic on floats:
        usage = np.array([RECENT_KEEP * u + (1.0 - RECENT_KEEP) * v
                          for u, v in zip(self._usage.tolist(), resp, strict=True)])
        version = self._commit_point(X, stats, params, drift, weight, usage, log_lik)
        label = resp.index(max(resp))
        return BatchResult(np.array([label]), answered[0, label : label + 1], answered,
                           np.array([log_lik]), NO_FLAG, NO_FLAG, version)

    def _commit_point(
        self, X: np.ndarray, stats: SufficientStatistics, params: Params,
        drift: list[float] | np.ndarray, weight: float, usage: np.ndarray, log_lik: float,
    ) -> int:
        """Commit the valid step of ``_learn_point`` for X (1, d), an inlier: its statistics,
        parameters, drift, step weight γ and recent usage, and the trackers; returns the
        version that answered."""
        collecting, version = self._collecting(), self.version_
        self.stats_, self._params, self._drift = stats, params, drift
        self.learning_rate_ = weight
        self._n_steps += 1
        self._sum_sq_weights = (1.0 - weight) ** 2 * self._sum_sq_weights + weight * weight
        self._usage = usage
        self._tail.count_inlier(log_lik, self.anomaly_rate, RECENT_KEEP)
        if collecting:
            ring, n = self._recent, self._recent_n
            if len(ring) and ring.shape[1] == X.shape[1]:  # ``_remember``'s one-row case
                ring[n % len(ring)] = X[0]
                self._recent_n = n + 1
            else:
                self._remember(X)
        self.n_seen_ += 1
        self._since_check += 1
        self.version_ += 1
        return version

    def _learn_point_compiled(
        self, X: np.ndarray, compiled: Callable[..., tuple[int, int, float]]
    ) -> BatchResult | None:
        """``_learn_point``'s step as one call of the compiled ``kernel.step``, into fresh
        arrays committed only when the kernel found the step valid."""
        stats, params = self.stats_, self._params
        assert stats is not None and params is not None
        K, d = params.means.shape
        drift = self._drift
        drift = np.zeros(K) if drift is None else np.asarray(drift, dtype=np.float64)
        vec, mvec = np.empty((kernel.ROWS, K)), np.empty((2, K, d))
        mats = np.empty((3,) + stats.scatter.shape)
        try:
            label, heaviest, weight = compiled(
                X, stats.nk, stats.means, stats.scatter, params.means, params.covariances,
                params.precisions_chol, params.log_norm, params.log_det, params.center, drift,
                self._usage, self.anomaly_threshold_, max_abs_value(d), self._n_steps,
                self.learning_decay, self.learning_offset, self._step_floor(), self.reg_covar,
                RECENT_KEEP, vec, mvec, mats)
        except Exception:  # the general path refuses the point, with the reason
            return None
        if label < 0:
            return None
        nk, weights, log_weights, log_det, log_norm, resp, usage, drift, log_lik = vec
        s_means, means = mvec
        scatter, covariances, prec_chol = mats
        version = self._commit_point(
            X, SufficientStatistics(nk, s_means, scatter),
            Params(weights, means, covariances, prec_chol, means[heaviest], log_weights, log_det,
                   log_norm),
            drift, weight, usage, float(log_lik[0]))
        return BatchResult(np.array([label]), resp[label : label + 1], resp[None], log_lik[:1],
                           NO_FLAG, NO_FLAG, version)

    def _collect_rewarm(self, X: np.ndarray) -> None:
        """After a large change, refit from a fresh warm-up buffer of the new regime."""
        self._rewarm.append(X.copy())
        buffered = np.concatenate(self._rewarm)
        if len(buffered) < self.warmup_:
            return
        rng = np.random.default_rng([self._state["seed"], 2, self.n_seen_])
        stats = fit_batch(buffered, self.n_components, self._kind, reg_covar=self.reg_covar,
                          init=self.init, hard=self.assignment == "hard", rng=rng,
                          n_init=WARMUP_RESTARTS)
        stats = self._keep_ids(stats)
        self._rewarm = []
        self._tail.forget_flags()
        self._flagged = self._flagged[:0]
        self._flagged_at = self._flagged_at[:0]
        self._start(stats, len(buffered), buffered)
        self.resets_["drift"] += 1
        self.collapse_history_ = (self.collapse_history_ + [(self.n_seen_, -1, "drift")])[
            -HISTORY_LENGTH:
        ]

    def _remember_settled(self) -> None:
        """Keep the components as they are while flags are rare: what a drift refit continues.

        By the time a drift refit happens, the flagged points of the new regime have already
        pulled some components away (they update the model once flags are frequent); the
        last components seen while flags were rare still describe the clusters the drift left.
        """
        if self._params is not None and not self._flags_excessive():
            self._settled = (self._params.means.copy(), self._params.covariances.copy())

    def _keep_ids(self, stats: SufficientStatistics) -> SufficientStatistics:
        """``stats`` of a refit, reordered so that each component continues the closest old id."""
        if self._settled is None:
            return stats
        d = stats.means.shape[1]
        means, covariances = self._settled
        new = self._kind.to_full(stats.covariances(self._kind, self.reg_covar), d)
        old = self._kind.to_full(covariances, d)
        order = matching.match_components(means, old, stats.means, new)
        return SufficientStatistics(stats.nk[order], stats.means[order], stats.scatter[order])

    def _update(
        self, Y: np.ndarray, resp: np.ndarray, learning_rate: float | None,
        one: tuple[list[float], float, list[list[float]], np.ndarray] | None = None,
    ) -> tuple[list[int], list[float]] | None:
        """Blend the statistics of points ``Y`` (centred on ``params.center``) in.

        For one point with its ``point.answer`` ``one``, returns the rows to factorise again
        and the new drift (``point.blend``).
        """
        assert self.stats_ is not None and self._params is not None
        m = len(Y)
        if m == 0:
            return None
        if self.assignment == "hard":
            resp = hard_responsibilities(resp)
        if m == 1 and one is not None:
            if learning_rate is None:
                decay, weight = point.step(
                    self._n_steps, learning_decay=self.learning_decay,
                    learning_offset=self.learning_offset,
                    floor=self._step_floor())
            else:
                decay, weight = 1.0 - learning_rate, learning_rate
            self.learning_rate_ = float(weight)
            self.stats_, rows, drift = point.blend(self._kind, self.stats_, one[3],
                                                   (resp[0] * weight).tolist(), decay, one[2],
                                                   self._drift)
            self._n_steps += 1
            self._sum_sq_weights = decay**2 * self._sum_sq_weights + weight * weight
            return rows, drift
        if learning_rate is None:
            decay, w, self.learning_rate_ = batch_schedule(
                self._n_steps, m, learning_decay=self.learning_decay,
                learning_offset=self.learning_offset, floor=self._step_floor())
        else:
            decay, w = 1.0 - learning_rate, np.full(m, learning_rate / m)
            self.learning_rate_ = float(learning_rate)
        batch = batch_statistics(self._kind, Y, resp * w[:, None], self._params.center)
        self.stats_.blend(batch, decay, self._kind)
        self.stats_.normalise()
        self._n_steps += m
        self._sum_sq_weights = decay**2 * self._sum_sq_weights + float(w @ w)
        return None

    def _step_floor(self) -> float:
        """The schedule's floor (cached; see ``_raised_halflife``)."""
        return _step_floor(self.halflife, self.n_components, self._n_features,
                           self.covariance_type)

    def _track_recent(
        self, X: np.ndarray, resp: np.ndarray, anomaly: np.ndarray, n_flagged: int
    ) -> None:
        """Recent inlier usage per component, recent flagged share, and the flagged buffer."""
        n = len(X)
        if n == 0:
            return
        keep = math.exp(-math.log(2.0) * n / RECENT_HALFLIFE)
        inliers = (~anomaly).astype(np.float64) if n_flagged else np.ones(n)
        used = inliers @ resp
        self._usage = keep * self._usage + ((1.0 - keep) / n) * used
        self._tail.count_flags(keep, n_flagged, n)
        if n_flagged:
            capacity = max(256, 4 * self.n_components * (X.shape[1] + 1))
            rows = np.flatnonzero(anomaly)
            arrivals = self.n_seen_ + rows
            flagged = X.take(rows, axis=0)
            if self._flagged.size:
                flagged = np.concatenate([self._flagged, flagged])
                arrivals = np.concatenate([self._flagged_at, arrivals])
            self._flagged, self._flagged_at = flagged[-capacity:], arrivals[-capacity:]

    def _collecting(self) -> bool:
        """Whether recent inliers are kept: a try of the moves is at most a ring away."""
        wait = self._move_wait
        if self._tail.flag_share > FIT_POOR_FACTOR * self.anomaly_rate:  # fit_poor_
            wait = min(wait, MOVE_WAIT_POOR) // 2
        return wait * CHECK_EVERY <= self._recent_capacity() and self.assignment != "hard"

    def _recent_capacity(self) -> int:
        return inlier_capacity(self.n_components, self._n_features or 1)

    def _remember(self, X: np.ndarray) -> None:
        """Keep the latest inliers X (n, d) in a ring of ``_recent_capacity()`` rows.

        During a step that may be undone (``_snapshot``), the rows overwritten are logged first.
        """
        capacity = self._recent_capacity()
        if self._recent.shape != (capacity, X.shape[1]):
            self._recent, self._recent_n = np.zeros((capacity, X.shape[1])), 0
        X = X[-capacity:]
        start = self._recent_n % capacity
        rows: slice | np.ndarray = slice(start, start + len(X))
        if start + len(X) > capacity:
            rows = (start + np.arange(len(X))) % capacity
        if self._undo is not None:
            self._undo.append((self._recent, rows, self._recent[rows].copy()))
        self._recent[rows] = X
        self._recent_n += len(X)

    def _try_move(self) -> None:
        """Try a split-and-merge or merge-and-re-seed move on the recent inliers (``moves``).

        After a rejected try the next waits twice as many checks (``SCREENED_GROWTH`` times when
        the screen stopped it), up to ``MOVE_WAIT_FIT``
        (``MOVE_WAIT_POOR`` while ``fit_poor_``, when the wait also halves at each check); an
        accepted move makes the next check try again. The ring of inliers is filled afresh for
        each try, and dropped after it.
        """
        assert self.stats_ is not None and self._params is not None
        poor = self.fit_poor_
        if poor:  # the wait runs out in about log2(wait) checks
            self._move_wait = min(self._move_wait, MOVE_WAIT_POOR) // 2
        if self._move_wait > 0:
            self._move_wait -= 1
            return
        if self._recent_n < len(self._recent) or not len(self._recent) or \
                self.assignment == "hard":
            return
        rng = np.random.default_rng([self._state["seed"], 3, self.n_seen_])
        move, growth = None, SCREENED_GROWTH
        if moves.worth_trying(self._params, self._kind, self._recent, rng):
            move = moves.best_move(self._params, self._kind, self._recent, self.reg_covar, rng)
            growth = 2
        self._recent, self._recent_n = np.empty((0, 0)), 0  # refilled before the next try
        if move is None:
            cap = MOVE_WAIT_POOR if poor else MOVE_WAIT_FIT
            self._move_backoff = min(growth * self._move_backoff, cap)
            self._move_wait = self._move_backoff
            return
        self._move_backoff, self._move_wait = 1, 0
        stats = self.stats_
        for slot, w, mean, cov in zip(move.slots, move.weights, move.means, move.covariances,
                                      strict=True):
            stats.nk[slot] = w
            stats.means[slot] = mean
            stats.scatter[slot] = w * cov
        self._record_reset(move.merged[0], "merge", stats)
        self._record_reset(move.slots[-1], move.reason, stats)

    def _reset_components(self) -> None:
        """Detect collapsed or stranded components and put them back to use."""
        assert self.stats_ is not None and self._params is not None
        stats, kind = self.stats_, self._kind
        n_eff = 1.0 / max(self._sum_sq_weights, 1e-300)
        for k, reason in collapse.find_collapsed(stats, self._params, kind, n_eff):
            group = self._novel_group()
            if group is not None:
                collapse.place(stats, kind, k, group.mean, group.covariance, group.share)
                self._forget_flagged(group.members)
            else:
                j, mean_a, mean_b, cov, mass = collapse.split_heaviest(stats, self._params, kind)
                if j == k:
                    continue
                collapse.place(stats, kind, j, mean_a, cov, mass)
                collapse.place(stats, kind, k, mean_b, cov, mass)
            self._record_reset(k, reason, stats)
        while self._flags_excessive():
            group = self._novel_group()
            k = int(self._usage.argmin())
            if group is None or self._usage[k] >= group.share:
                break
            collapse.place(stats, kind, k, group.mean, group.covariance, group.share)
            self._forget_flagged(group.members)
            self._record_reset(k, "stranded", stats)
        self._try_move()

    def _novel_group(self) -> collapse.Group | None:
        if len(self._flagged) == 0 or not np.isfinite(self.anomaly_threshold_):
            return None
        return collapse.find_dense_group(
            self._flagged, self._flagged_at, self.n_seen_, self._fitted(), self._kind,
            threshold=self.anomaly_threshold_, reg_covar=self.reg_covar,
        )

    def _forget_flagged(self, members: np.ndarray) -> None:
        keep = np.ones(len(self._flagged), dtype=bool)
        keep[members] = False
        self._flagged, self._flagged_at = self._flagged[keep], self._flagged_at[keep]

    def _record_reset(self, k: int, reason: str, stats: SufficientStatistics) -> None:
        stats.normalise()
        self._usage[k] = stats.nk[k]
        self._params = params_from_statistics(stats, self._kind, self.reg_covar)
        self.resets_[reason] += 1
        self.collapse_history_ = (self.collapse_history_ + [(self.n_seen_, k, reason)])[
            -HISTORY_LENGTH:
        ]

    def _refresh(self, threshold: bool, rows: list[int] | None = None) -> None:
        """The M-step: parameters from the statistics; optionally the anomaly threshold too.

        ``rows`` (after one point): the only covariances to compute and factorise again
        (``point.blend``); the others keep covariance and factor.
        """
        assert self.stats_ is not None
        if rows is not None and self._params is not None:
            self._params = refresh_params(self.stats_, self._kind, self.reg_covar, self._params,
                                          rows)
        else:
            self._params = params_from_statistics(self.stats_, self._kind, self.reg_covar)
            self._drift = None
        self.version_ += 1
        if threshold or not np.isfinite(self.anomaly_threshold_):
            p = self._params
            self.anomaly_threshold_ = self._tail.calibrate(
                p.weights, p.log_det, p.means.shape[1], self.anomaly_rate,
                start=self.anomaly_threshold_)

    @property
    def tail_inflation_(self) -> float:
        """How many times more of the recent points lie in the moderate tail than the mixture
        predicts (1 when it describes the data's tail; see ``model.anomaly``)."""
        return self._tail.inflation

    @property
    def flag_excess_(self) -> float:
        """The recent flagged share (half-life ``RECENT_HALFLIFE`` points) over ``anomaly_rate``:
        about 1 while the model fits and anomalies are as rare as it assumes."""
        return self._tail.excess(self.anomaly_rate)

    @property
    def fit_poor_(self) -> bool:
        """Whether flags run far above ``anomaly_rate`` (``flag_excess_`` > ``FIT_POOR_FACTOR``):
        the data are not the mixture the threshold assumes (heavy tails, a poor fit), or a burst
        of anomalies or drift is under way."""
        return self.flag_excess_ > FIT_POOR_FACTOR

    @property
    def early_floor_(self) -> float | None:
        """While the tail is not measured yet after a warm-up: the log-likelihood below which
        (and below ``anomaly_threshold_``) a point is reported as an anomaly; else ``None``."""
        return self._tail.early_floor

    # The tail's state under its names in checkpoint headers (``persistence.dumps``), read-only.
    _flag_share = property(lambda self: self._tail.flag_share)
    _bound = property(lambda self: self._tail.bound)
    _inflation = property(lambda self: self._tail.inflation)
    _window = property(lambda self: self._tail.window)
    _window_share = property(lambda self: self._tail.window_share)
    _window_mass = property(lambda self: self._tail.window_mass)
    _early = property(lambda self: self._tail.early)

    # ------------------------------------------------------------------ one model, many workers
    def delta(self, X: Any) -> tuple[BatchResult, StatsDelta]:
        """A worker's answers to a batch X (n, d) and the delta its leader folds (see ``fold``).

        The model (the worker's copy of the leader's) is left unchanged. Before it is
        initialised, the batch is answered as a copy of it learning X alone would answer, and
        the delta carries the points only (the leader warms up on them itself).
        """
        self._ready()
        if not self.initialized_ and self._n_features not in (None, np.shape(X)[-1]):
            restarted = copy.deepcopy(self)  # a leader of this model restarts: see ``fold``
            restarted.restart_warm_up()
            return restarted.delta(X)
        X = self._check(X)
        if not self.initialized_:
            out = warmup_delta(self.covariance_type, self.n_components, X)
            if not len(X):
                return empty_result(self.n_components, self.version_), out
            return copy.deepcopy(self)._learn(X, None), out
        params = self._fitted()
        out, resp, log_lik, anomaly = compute_delta(
            self._kind, params, X, version=self.version_, threshold=self.anomaly_threshold_,
            protecting=self.protecting_, hard=self.assignment == "hard",
            recent_halflife=RECENT_HALFLIFE, keep_points=self.drifting_ or bool(self._rewarm),
            drift_share=DRIFT_SHARE, window=self._tail.counted_window(self.anomaly_rate),
            keep_inliers=self._collecting())
        return make_result(resp, log_lik, self._tail.reported(anomaly, log_lik),
                       np.zeros(len(X), dtype=bool), self.version_), out

    def fold(self, delta: StatsDelta) -> None:
        """Learn from a worker's delta as if its points had arrived here: the leader's update.

        The delta's unit-weight statistics are blended in with the step sizes of its
        ``n_updating`` points (see :mod:`streamem.model.delta`), the recent averages and flagged
        points are taken over, and the reset, drift and threshold logic runs as after
        ``partial_fit`` (a refit after a drift collects the points deltas carry). A warm-up
        delta, or any delta while this model is not initialised yet, is learned from its points
        (it must carry all of them). ``ValueError`` for a delta of another model;
        ``ModelRejected`` (the model unchanged) when folding would make it invalid.
        """
        self._ready()
        delta.validate()
        if (delta.covariance_type, delta.n_components) != (self.covariance_type,
                                                           self.n_components) or (
                self._n_features not in (None, delta.n_features)):
            raise ValueError("the delta was computed for another model (covariance type, "
                             "components or features differ)")
        if (delta.warmup or not self.initialized_) and len(delta.points) != delta.n_points:
            raise ValueError("this model is not initialised: it can fold only deltas that carry "
                             "their points")
        def fold() -> BatchResult:
            self._fold(delta)
            return empty_result(self.n_components, self.version_)

        self._all_or_nothing(self._snapshot(), "delta", fold)

    def _fold(self, delta: StatsDelta) -> None:
        if self._n_features is None:
            self._n_features = delta.n_features
        if delta.warmup or not self.initialized_:
            if delta.n_points:
                self._learn(delta.points, None)
            return
        assert self.stats_ is not None
        n, m = delta.n_points, delta.n_updating
        if m:
            decay, w, self.learning_rate_ = batch_schedule(
                self._n_steps, m, learning_decay=self.learning_decay,
                learning_offset=self.learning_offset, floor=self._step_floor())
            weight = float(w.sum()) / m  # exact when the steps are 1/(t + τ0)
            self.stats_.blend(SufficientStatistics(delta.nk * weight, delta.means.copy(),
                                                   delta.scatter * weight), decay, self._kind)
            self.stats_.normalise()
            self._n_steps += m
            self._sum_sq_weights = decay**2 * self._sum_sq_weights + m * weight**2
        self._usage = delta.recent_keep * self._usage + delta.usage_add
        self._tail.fold(delta)
        if len(delta.inliers):
            self._remember(delta.inliers)
        if len(delta.flagged):
            capacity = flagged_capacity(self.n_components, delta.n_features)
            flagged, arrivals = delta.flagged, self.n_seen_ + delta.flagged_at
            if self._flagged.size:
                flagged = np.concatenate([self._flagged, flagged])
                arrivals = np.concatenate([self._flagged_at, arrivals])
            self._flagged, self._flagged_at = flagged[-capacity:], arrivals[-capacity:]
        if (self.drifting_ or self._rewarm) and len(delta.points):
            self._collect_rewarm(delta.points)
        self.n_seen_ += n
        self._since_check += n
        checked = self._since_check >= CHECK_EVERY
        if checked:
            self._since_check = 0
            self._reset_components()
            self._remember_settled()
        if n:
            self._refresh(threshold=checked)

    # ------------------------------------------------------------------ helpers
    def _settle(self) -> None:
        """Forget the drift of kept factors (``point.blend``) and derive the parameters from
        weights, means, covariances and center as loading a saved model does (LAPACK's factors
        of the covariances, which are those kept by the numpy path bit for bit, and those of
        the compiled kernel to rounding; the log weights and log dets of ``refresh_params``
        may differ in the last bit), so that the copy continues exactly as the original."""
        self._drift = None
        p = self._params
        if p is not None:
            self._params = make_params(self._kind, p.weights, p.means, p.covariances, p.center)

    def _buffered(self) -> int:
        return sum(len(b) for b in self._buffer)

    def _check(self, X: Any) -> np.ndarray:
        """Points to learn from (a stream's batch may be empty); the first fix d (and the
        feature names of a data frame)."""
        if self._n_features is not None:
            self._check_feature_names(X)
        names = feature_names(X)
        X = check_points(X, self._n_features, allow_empty=True)
        if self._n_features is None:
            self._n_features = X.shape[1]
            self._set_feature_names(names)
        return X

    def _points(self, X: Any) -> np.ndarray:
        """Points to answer, with as many features (and the same names) as the model."""
        self._check_feature_names(X)
        return check_points(X, self.n_features_in_)

    def _set_feature_names(self, names: np.ndarray | None) -> None:
        """``feature_names_in_``: a data frame's string column names; absent otherwise."""
        if names is not None:
            self.feature_names_in_ = names
        else:
            vars(self).pop("feature_names_in_", None)

    def _check_feature_names(self, X: Any) -> None:
        fitted = vars(self).get("feature_names_in_")
        if fitted is not None or type(X) is not np.ndarray:
            check_feature_names(fitted, X)

    def _fitted(self) -> Params:
        if self._params is None:
            raise not_fitted(NOT_FITTED)
        return self._params

    def log_prob_components(self, X: Any) -> np.ndarray:
        """log π_k + log N(x | k), (n, K)."""
        params = self._fitted()
        return estimate_weighted_log_prob(self._kind, params, self._points(X))

    # ------------------------------------------------------------------ persistence
    def params_dict(self) -> dict[str, Any]:
        """JSON-able parameters for other services (the model topic)."""
        return {
            "version": self.version_,
            "n_seen": self.n_seen_,
            "covariance_type": self.covariance_type,
            "weights": self.weights_.tolist(),
            "means": self.means_.tolist(),
            "covariances": self.covariances_.tolist(),
            "anomaly_threshold": self.anomaly_threshold_,
        }

    def to_bytes(self) -> bytes:
        """The whole learning state as bytes (see :mod:`streamem.model.persistence`)."""
        self._ready()
        self._settle()
        return persistence.dumps(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> OnlineGMM:
        """A model from :meth:`to_bytes` output; ``ValueError`` for anything else."""
        return persistence.loads(cls, data)  # type: ignore[no-any-return]

    def save(self, path: str) -> None:
        """Write :meth:`to_bytes` to ``path`` (plainly; for a write that a crash cannot leave
        half done, ``streamem.io.files.atomic_write(path, model.to_bytes())``)."""
        with open(path, "wb") as fh:
            fh.write(self.to_bytes())

    @classmethod
    def load(cls, path: str, max_bytes: int = 1 << 30) -> OnlineGMM:
        """The model saved at ``path``; ``ValueError`` when it is not one or over ``max_bytes``."""
        import os

        with open(path, "rb") as fh:  # read(n) allocates n bytes: ask for the file's size only
            data = fh.read(min(os.fstat(fh.fileno()).st_size, max_bytes) + 1)
        if len(data) > max_bytes:
            raise ValueError(f"{path} is more than the limit of {max_bytes:,} bytes")
        return cls.from_bytes(data)

    def __repr__(self) -> str:
        return (f"OnlineGMM(n_components={self.n_components}, "
                f"covariance_type={self.covariance_type!r})")


def _raised_halflife(
    halflife: float | None, K: int, d: int | None, covariance_type: str
) -> float | None:
    """``halflife``, raised to ``POINTS_PER_PARAMETER`` points per free parameter."""
    if halflife is None or d is None:
        return halflife
    n_parameters = K * d + KINDS[covariance_type].n_parameters(K, d) + K - 1
    return max(float(halflife), POINTS_PER_PARAMETER * n_parameters)


@functools.lru_cache(maxsize=64)
def _step_floor(halflife: float | None, K: int, d: int | None, covariance_type: str) -> float:
    return floor_for_halflife(_raised_halflife(halflife, K, d, covariance_type))
