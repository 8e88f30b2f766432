"""The evaluate stage's params: device, batch size, the report's sizes and the baseline's."""

from __future__ import annotations

from mlpipeline.core.device import DeviceChoice
from mlpipeline.core.params import param, params_dataclass
from mlpipeline.evaluation.baseline import BaselineParams


@params_dataclass
class EvaluateParams:
    device: DeviceChoice
    batch_size: int = param(ge=1)
    ece_bins: int = param(ge=1)
    misclassified: int = param(ge=1)
    baseline: BaselineParams
