"""A stand-in peer for the harness tests: prints the JSON line a peer prints, its training rate
from STANDIN_RATE (or fails as a peer without its framework does, with STANDIN_FAIL), and
appends its name to STANDIN_LOG, so that a test sees the order the runs took."""

import json
import os
import sys

if __name__ == "__main__":
    with open(os.environ["STANDIN_LOG"], "a") as log:
        log.write(os.environ["STANDIN_NAME"] + "\n")
    if os.environ.get("STANDIN_FAIL"):
        print("Traceback (most recent call last):", file=sys.stderr)
        print("ModuleNotFoundError: No module named 'torch'", file=sys.stderr)
        sys.exit(1)
    steps = int(sys.argv[sys.argv.index("--steps") + 1])
    print("some framework's banner")
    print(
        json.dumps(
            {
                "train_windows_per_s": float(os.environ["STANDIN_RATE"]),
                "steps": steps,
                "warmup_s": 0.1,
                "sample_ms": float(os.environ["STANDIN_MS"]),
                "train_method": "a stand-in loop",
                "sample_method": "a stand-in sampler",
                "versions": {"python": "3", "standin": "1.0"},
            }
        )
    )
