"""Check results of a run over several languages are combined without hiding a failing language."""

import dagster as dg

from xlr_pipeline.defs.metadata import PartitionOutcome, combine_checks


def _outcome(passed: bool, rows: int) -> PartitionOutcome:
    return PartitionOutcome(
        metadata={},
        checks=[
            dg.AssetCheckResult(check_name="row_count_matches_source", passed=passed, metadata={"rows": rows}),
            dg.AssetCheckResult(check_name="vectors_valid", passed=True, severity=dg.AssetCheckSeverity.WARN),
        ],
    )


def test_a_check_fails_when_one_language_fails_and_names_it():
    combined = {
        result.check_name: result for result in combine_checks({"de": _outcome(True, 5), "ja": _outcome(False, 3)})
    }
    rows = combined["row_count_matches_source"]
    assert not rows.passed
    assert rows.metadata["failed_languages"].value == "ja"
    assert "| ja | False | rows=3 |" in rows.metadata["per_language"].value
    assert combined["vectors_valid"].passed and combined["vectors_valid"].severity == dg.AssetCheckSeverity.WARN
    assert combined["vectors_valid"].metadata["failed_languages"].value == "none"
