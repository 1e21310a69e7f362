"""A few hundred fuzzed inputs for each untrusted reader (benchmarks/fuzz.py runs 100,000 and more)."""

import json
import shutil

import pytest
from fuzzing import compressed_files, config_files, decode, load_config, seed_file
from hypothesis import HealthCheck, given, settings

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def seed(tiny_run):
    return seed_file(tiny_run.model)


def test_the_seed_decodes(tiny_run, seed):
    assert decode(tiny_run.model, seed) == "decoded"


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_fuzzed_compressed_files_decode_or_raise_a_vaekit_error_in_time(tiny_run, seed):
    @FUZZ
    @given(blob=compressed_files(seed))
    def check(blob):
        assert decode(tiny_run.model, blob) == "decoded" or decode(tiny_run.model, blob).startswith("CodecError")

    check()


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_fuzzed_configs_load_or_raise_a_vaekit_error_in_time(tiny_run, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fuzz") / "run"
    shutil.copytree(tiny_run.run_dir, run_dir)
    seed = json.loads((run_dir / "config.json").read_text())
    assert load_config(run_dir, json.dumps(seed).encode()) == "loaded"

    @FUZZ
    @given(text=config_files(seed))
    def check(text):
        outcome = load_config(run_dir, text)
        assert outcome == "loaded" or outcome.startswith("ModelFileError")

    check()
