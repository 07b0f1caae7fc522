"""One GPU machine, 8 minutes: a slice of configs/experiment-full.yaml, without Prefect or MLflow.

    python bench/experiment_slice.py --config configs/experiment-gpu-slice.yaml --out "$OUT"

Simulates in parallel (one worker per CPU core), trains on the accelerator JAX finds, and writes
results.json, results.md and the plot to --out; the JSON summary is printed last. ``--tiny`` shrinks
every budget so the whole path runs in about a minute on a laptop CPU (what the tests run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lwd_core.algo.compilation import use_compilation_cache
from lwd_core.config import LWDConfig
from lwd_core.experiment import Experiment, write_report
from lwd_core.sim.pool import SimPool

TINY = {
    "experiment": dict(tasks=["restock-horizontal"], arms=["bc", "lwd-offline", "lwd-online"], rounds=1,
                       episodes_per_round=2, eval_episodes_per_task=2, curve_episodes_per_task=1,
                       demos_per_task=2, failed_rollouts_per_task=1, play_per_task=1),
    "algo": dict(hidden_dims=[32, 32], batch_size=32, flow_steps=3,
                 agents={"lwd": {"critic_heads": 2, "value_size": 21}, "recap": {"value_size": 21}},
                 pretrain_steps=10, warmup_steps=5, offline_steps=5, online_steps_per_round=5,
                 samples_per_insert=0.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="shrink every budget (CPU smoke run)")
    parser.add_argument("--workers", type=int, default=0, help="simulator processes (0: one per core)")
    args = parser.parse_args()

    import jax
    import yaml

    document = yaml.safe_load(args.config.read_text()) or {}
    if args.tiny:
        for section, values in TINY.items():
            document.setdefault(section, {}).update(values)
    config = LWDConfig(data_dir=args.out / "data", **document)
    use_compilation_cache(config.compilation_cache_dir)  # a rerun loads the compiled programs
    started = time.monotonic()
    with SimPool(args.workers or config.experiment.workers) as pool:
        results = Experiment(config.experiment, config.algo, pool, args.out / "stores").run()
    results["device"] = str(jax.devices()[0])
    results["wall_minutes"] = round((time.monotonic() - started) / 60, 2)
    table = write_report(results, args.out)
    print(table)
    print(json.dumps({"device": results["device"], "wall_minutes": results["wall_minutes"],
                      "final": {k: a["final"]["success"] for k, a in results["arms"].items()},
                      "p_values": {k: c["p_value"] for k, c in results["comparisons"].items()}}))


if __name__ == "__main__":
    main()
