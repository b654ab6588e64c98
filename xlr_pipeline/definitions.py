"""The code location: every asset and check under defs/, the automation, and the shared settings resource."""

import dagster as dg

from xlr_pipeline import defs as defs_package
from xlr_pipeline.defs.automation import (
    language_files_sensor,
    reevaluate_all_languages,
    reevaluate_language_job,
)
from xlr_pipeline.defs.resources import settings_from_environment

defs = dg.Definitions(
    assets=dg.load_assets_from_package_module(defs_package),
    asset_checks=dg.load_asset_checks_from_package_module(defs_package),
    sensors=[language_files_sensor],
    schedules=[reevaluate_all_languages],
    jobs=[reevaluate_language_job],
    resources={"settings": settings_from_environment()},
)
