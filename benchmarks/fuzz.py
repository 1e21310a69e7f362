"""Fuzz the two readers of untrusted bytes: the compressed-file decoder and the run-folder config loader.

Each takes N inputs (random bytes, and random edits of a valid file, half of them with the checksum
recomputed so that they reach the parser and the decoder behind it). An input passes when it gives a
result or a VaekitError within tests/fuzzing.TIME_LIMIT seconds; anything else is a failure, and its
input is saved for a test. The same targets run in the test suite with a few hundred inputs.

    python benchmarks/fuzz.py --inputs 100000 --json benchmarks/results/fuzz.json
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from common import cpu_name, write_json
from fuzzing import TIME_LIMIT, compressed_files, config_files, decode, load_config, seed_file

import vaekit


def fuzz(name: str, strategy, target, inputs: int, failures_dir: Path) -> dict:
    outcomes: collections.Counter[str] = collections.Counter()
    slowest = 0.0

    @settings(
        max_examples=inputs, deadline=None, database=None, phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(strategy)
    def run(data: bytes) -> None:
        nonlocal slowest
        start = time.perf_counter()
        try:
            outcome = target(data)
        except Exception as error:  # a crash other than a VaekitError, or a hang
            outcome = f"FAILURE {type(error).__name__}"
            traceback.print_exc()
        elapsed = time.perf_counter() - start
        if elapsed > TIME_LIMIT and not outcome.startswith("FAILURE"):  # the limit's alarm was swallowed somewhere
            outcome = "FAILURE slow"
        outcomes[outcome] += 1
        if outcome.startswith("FAILURE"):  # keep the input, to replay it
            failures_dir.mkdir(parents=True, exist_ok=True)
            (failures_dir / f"{name}-{sum(outcomes.values())}.bin").write_bytes(data)
        slowest = max(slowest, elapsed)

    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    failures = sum(n for k, n in outcomes.items() if k.startswith("FAILURE"))
    print(f"{name}: {sum(outcomes.values())} inputs in {seconds:.0f} s, {failures} failures, slowest input "
          f"{slowest * 1000:.0f} ms; outcomes {dict(outcomes.most_common())}", flush=True)  # fmt: skip
    return {"inputs": sum(outcomes.values()), "failures": failures, "seconds": round(seconds, 1),
            "slowest_input_ms": round(slowest * 1000, 1), "outcomes": dict(outcomes.most_common())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs per target")
    parser.add_argument("--targets", default="decoder,config_loader", help="comma-separated subset")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--failures", default="fuzz-failures", help="folder for inputs that failed")
    args = parser.parse_args()
    warnings.simplefilter("error", RuntimeWarning)  # an overflow or NaN warning in a reader counts as a failure

    with tempfile.TemporaryDirectory() as tmp:
        run = vaekit.train("digits", Path(tmp) / "seed", epochs=2, hidden=(32,), latent_dim=4, quiet=True)
        model, seed = run.model, seed_file(run.model)
        config_dir = Path(tmp) / "loaded"
        shutil.copytree(run.run_dir, config_dir)
        config = json.loads((config_dir / "config.json").read_text())
        targets = {
            "decoder": (compressed_files(seed), lambda b: decode(model, b)),
            "config_loader": (config_files(config), lambda b: load_config(config_dir, b)),
        }
        results = {
            name: fuzz(name, *targets[name], args.inputs, Path(args.failures)) for name in args.targets.split(",")
        }
    failed = any(r["failures"] for r in results.values())
    if args.json:
        write_json(args.json, {**results, "machine": cpu_name(), "date": time.strftime("%Y-%m-%d")})
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
