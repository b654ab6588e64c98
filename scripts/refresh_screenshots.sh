#!/usr/bin/env bash
# Refresh docs/screenshots/ from the browser test (which otherwise writes them to its tmp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
XLR_SCREENSHOT_DIR="$PWD/docs/screenshots" .venv/bin/pytest -q xlr_pipeline_tests/test_browser.py xlr_pipeline_tests/test_search.py -k "browser or Browser or page"
