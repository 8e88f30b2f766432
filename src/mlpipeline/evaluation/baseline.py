"""The reference every network figure is read against: an RBF-kernel SVM on raw pixels.

Its probabilities come from Platt scaling fitted on cross-validated decision
values (``CalibratedClassifierCV``), so log-loss and calibration have a
reference too, and its predicted class is their argmax, as for the network.

The exact kernel costs about (training images)^2 x pixels to fit and (test
images x support vectors x pixels) to predict: minutes at 10,000 8x8 images,
days at 150,000 32x32 RGB test images. Above ``EXACT_BUDGET`` (``kernel: auto``)
the same RBF kernel is approximated by a Nystroem map onto ``components``
training images, and a linear SVM is fitted on those features: fit and
prediction then grow linearly. ``metrics.json`` names which one was scored.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.kernel_approximation import Nystroem
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.svm import SVC, LinearSVC
from threadpoolctl import threadpool_limits

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import param, params_dataclass

CALIBRATION_FOLDS = 5
# kernel: auto fits the exact SVM while training images x (training + test images) x pixels stays
# under this: about 8x the demo digits' 1.2e8, a minute or two of fitting on one core.
EXACT_BUDGET = 1e9
NAMES = {"exact": "rbf_svm", "nystroem": "rbf_nystroem_linear_svm"}  # the metrics' baseline.model

Method = Literal["svm", "none"]
Kernel = Literal["auto", "exact", "nystroem"]
Baseline = CalibratedClassifierCV | Pipeline  # exact: the calibrated SVC; nystroem: map + calibrated SVM


@params_dataclass
class BaselineParams:
    method: Method  # none: no baseline (its fit is the one part of evaluate that needs its memory)
    C: float = param(gt=0)
    gamma: float | None = param(gt=0)  # None: scikit-learn's "scale", 1 / (pixels * pixel variance)
    max_train: int = param(ge=2)  # SVM fitting grows ~quadratically with the image count
    seed: int = param(ge=0)
    kernel: Kernel  # auto: exact up to EXACT_BUDGET, else nystroem
    components: int = param(ge=1)  # nystroem: training images the kernel is approximated on


def flatten(images: np.ndarray) -> np.ndarray:
    """uint8 images N x C x H x W as float64 rows of pixels in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float64) / 255.0


def choose_kernel(params: BaselineParams, train_count: int, test_count: int, pixels: int) -> str:
    """``exact`` or ``nystroem``: the param, or for ``auto`` the exact kernel's cost against the budget."""
    if params.kernel != "auto":
        return params.kernel
    fitted = min(train_count, params.max_train)
    return "exact" if fitted * (fitted + test_count) * pixels <= EXACT_BUDGET else "nystroem"


def fit_baseline(
    images: np.ndarray, labels: np.ndarray, params: BaselineParams, kernel: str = "exact"
) -> Baseline:
    """Fit the calibrated SVM (``kernel``: exact or nystroem) on the given training images.
    Deterministic: the folds are unshuffled, libsvm is not random and the Nystroem basis is seeded."""
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        raise PipelineError(
            "evaluate.baseline: a class has a single training image; calibrating the SVM's "
            "probabilities needs at least 2 per class"
        )
    rows = flatten(images)
    folds = min(CALIBRATION_FOLDS, smallest)
    if kernel == "exact":
        svm = SVC(kernel="rbf", C=params.C, gamma="scale" if params.gamma is None else params.gamma)
        return CalibratedClassifierCV(svm, cv=folds, ensemble=False).fit(rows, labels)
    return _fit_nystroem(rows, labels, params, folds)


def _fit_nystroem(rows: np.ndarray, labels: np.ndarray, params: BaselineParams, folds: int) -> Pipeline:
    """The Nystroem map, fitted once on all rows (it never sees a label, so the calibration folds
    cannot leak through it), then the calibrated linear SVM on the mapped rows."""
    gamma = 1.0 / (rows.shape[1] * rows.var()) if params.gamma is None else params.gamma  # as "scale"
    components = min(params.components, len(rows))
    basis = Nystroem(kernel="rbf", gamma=gamma, n_components=components, random_state=params.seed).fit(rows)
    linear = LinearSVC(C=params.C, random_state=params.seed)
    calibrated = CalibratedClassifierCV(linear, cv=folds, ensemble=False).fit(basis.transform(rows), labels)
    return make_pipeline(basis, calibrated)


_predicting: Baseline | None = None  # this process's fitted baseline


def start_predicting(model: Baseline) -> None:
    """Hold ``model`` for ``predict_batch`` in this process, with one BLAS thread: the worker
    processes are the parallelism, and more threads per process would only fight over the cores."""
    global _predicting
    threadpool_limits(limits=1, user_api="blas")
    _predicting = model


def predict_batch(batch: tuple[np.ndarray, np.ndarray], num_classes: int) -> np.ndarray:
    """``baseline_probabilities`` of one (images, labels) batch by the model ``start_predicting`` holds."""
    assert _predicting is not None, "start_predicting runs first in every worker"
    return baseline_probabilities(_predicting, batch[0], num_classes)


def baseline_probabilities(model: Baseline, images: np.ndarray, num_classes: int) -> np.ndarray:
    """Probabilities N x ``num_classes``; a class the SVM never saw in training gets 0."""
    probabilities = np.zeros((len(images), num_classes))
    probabilities[:, model.classes_] = model.predict_proba(flatten(images))
    return probabilities
