"""Where the repository and the tests' data files are, for tests that read files or start processes."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "tests" / "data"
