import pytest

from xlr_pipeline.core.data.languages import UnknownLanguageError, normalize_language


def test_iso_codes_pass_through_and_aliases_map():
    assert normalize_language("de") == "de"
    assert normalize_language("JP") == "ja"
    assert normalize_language("zh_CN") == "zh"


def test_unknown_code_names_its_source():
    with pytest.raises(UnknownLanguageError, match=r"unknown language code 'xx' in captions/xx.tsv"):
        normalize_language("xx", "captions/xx.tsv")
