"""Session fixtures shared by the ingest, audit and bad-input tests: one small synthetic dataroot
and one ingest of it with the test defaults (tests copy them before changing anything)."""

from __future__ import annotations

import pytest
from _ingest_helpers import ingest, make_dataroot


@pytest.fixture(scope="session")
def dataroot(tmp_path_factory):
    return make_dataroot(tmp_path_factory.mktemp("synth") / "nuscenes")


@pytest.fixture(scope="session")
def good(dataroot, tmp_path_factory):
    """The shard folder of `dataroot` ingested with the test defaults (_ingest_helpers.ingest)."""
    out = tmp_path_factory.mktemp("good") / "shards"
    result = ingest(dataroot, out)
    assert result.exit_code == 0, result.output
    return out
