"""The code location: one lane per dataset found under the data folder (and XLR_DATASET_ROOTS).

Datasets are discovered when the code location loads: a new dataset folder appears as its own lane after
a reload, with no code change.
"""

import dagster as dg

from xlr_pipeline.defs.executors import executor_from_environment
from xlr_pipeline.defs.pipeline import build_pipeline
from xlr_pipeline.defs.resources import settings_from_environment


@dg.definitions
def defs() -> dg.Definitions:
    return build_pipeline(settings_from_environment(), executor=executor_from_environment()).definitions
