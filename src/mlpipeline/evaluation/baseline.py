"""The reference every network figure is read against: an RBF-kernel SVM on raw pixels.

Its probabilities come from Platt scaling fitted on cross-validated decision
values (``CalibratedClassifierCV``), so log-loss and calibration have a
reference too, and its predicted class is their argmax, as for the network.
"""

from __future__ import annotations

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.svm import SVC

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import param, params_dataclass
from mlpipeline.splitting import keep_fraction

CALIBRATION_FOLDS = 5


@params_dataclass
class BaselineParams:
    C: float = param(gt=0)
    gamma: float | None = param(gt=0)  # None: scikit-learn's "scale", 1 / (pixels * pixel variance)
    max_train: int = param(ge=2)  # SVM fitting grows ~quadratically with the image count
    seed: int = param(ge=0)


def flatten(images: np.ndarray) -> np.ndarray:
    """uint8 images N x C x H x W as float64 rows of pixels in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float64) / 255.0


def fit_baseline(images: np.ndarray, labels: np.ndarray, params: BaselineParams) -> CalibratedClassifierCV:
    """Fit the calibrated SVM on at most ``params.max_train`` training images (a stratified, seeded
    subset when there are more). Deterministic: the folds are unshuffled and libsvm is not random."""
    if len(labels) > params.max_train:
        keep = keep_fraction(labels, np.ones(len(labels), bool), params.max_train / len(labels), params.seed)
        images, labels = images[keep], labels[keep]
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        raise PipelineError(
            "evaluate.baseline: a class has a single training image; calibrating the SVM's "
            "probabilities needs at least 2 per class"
        )
    svm = SVC(kernel="rbf", C=params.C, gamma="scale" if params.gamma is None else params.gamma)
    folds = min(CALIBRATION_FOLDS, smallest)
    return CalibratedClassifierCV(svm, cv=folds, ensemble=False).fit(flatten(images), labels)


def baseline_probabilities(model: CalibratedClassifierCV, images: np.ndarray, num_classes: int) -> np.ndarray:
    """Probabilities N x ``num_classes``; a class the SVM never saw in training gets 0."""
    probabilities = np.zeros((len(images), num_classes))
    probabilities[:, model.classes_] = model.predict_proba(flatten(images))
    return probabilities
