"""The performance benchmarks in one run, each figure next to its floor or peer; prints one JSON object
and writes it to ``--out`` (default docs/results/performance.json).

    uv run python bench/run_all.py [--qam PATH] [--quick]

- ingest: ingestion + labelling against a plain copy of the same bytes (bench/ingest.py);
- learner: updates/s against the QAM reference at the reference size, when ``--qam`` names a local
  checkout of github.com/ColinQiyangLi/qam (bench/learner.py --compare-qam);
- memory: peak RSS of loading a training run's data against buffer size (bench/memory.py);
- scale: a synthetic fleet of 16 .. 1,024 robots through the real edge client, store, ingest flow
  and coordinator (bench/scale.py);
- evaluation: episodes/s with simulators rebuilt per episode vs reused, inline and in workers
  (bench/eval_throughput.py).
``--quick`` runs each at a small size (a smoke run, not figures to report).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

QUICK = {
    "ingest": ["--episodes", "40", "--repeats", "1"],
    "learner": ["--hidden", "64", "--heads", "2", "--steps", "2", "--window", "2", "--rounds", "1"],
    "memory": ["--sizes", "2000", "4000", "--capacity", "3000"],
    "scale": ["--robots", "4", "--seconds", "15"],
    "eval_throughput": ["--episodes", "1", "--max-steps", "20"],
}


def run(script: str, args: list[str]) -> dict:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, str(HERE / f"{script}.py"), *args], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": f"exit {out.returncode}", "stderr_tail": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1]) | {"bench_wall_s": round(time.perf_counter() - started, 1)}


def summary(results: dict) -> dict:
    """The headline ratios."""
    ingest, learner, memory = results.get("ingest", {}), results.get("learner", {}), results.get("memory", {})
    evaluation, scale = results.get("eval_throughput", {}), results.get("scale", {})
    lines = {
        "ingest_slowdown_vs_plain_copy": ingest.get("slowdown_vs_plain_copy"),
        "ingest_slowdown_vs_plain_copy_one_process": (ingest.get("one_process") or {}).get("slowdown_vs_plain_copy"),
        "learner_ratio_vs_qam_reference": learner.get("ratio_vs_qam_reference"),
        "one_ingest_worker_saturates_at_robots": scale.get("one_ingest_worker_saturates_at_robots"),
    }
    points = memory.get("points") or []
    if len(points) >= 2:
        first, last = points[0], points[-1]
        capped = next(key for key in last if key.startswith("cap_")) if any(k.startswith("cap_") for k in last) else None
        lines["memory_buffer_growth"] = last["buffer_transitions"] / first["buffer_transitions"]
        if capped:
            lines["memory_peak_growth_with_cap"] = round(last[capped]["peak_rss_mb"] / first[capped]["peak_rss_mb"], 2)
        lines["memory_peak_growth_without_cap"] = round(last["no_cap"]["peak_rss_mb"] / first["no_cap"]["peak_rss_mb"], 2)
    if evaluation.get("before"):
        before = evaluation["before"]["episodes_per_s"]
        lines["eval_episodes_per_s"] = {"new_simulator_per_episode": before,
                                        "reused_inline": evaluation["pool_inline"]["reused_call"]["episodes_per_s"],
                                        "reused_workers": evaluation["pool_workers"]["reused_call"]["episodes_per_s"]}
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qam", default="", help="local checkout of github.com/ColinQiyangLi/qam")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "results" / "performance.json"))
    args = parser.parse_args()
    plan = {"ingest": [], "learner": ["--compare-qam", args.qam] if args.qam else [],
            "memory": ["--capacity", "100000"], "scale": [],
            "eval_throughput": []}
    results = {}
    for script, extra in plan.items():
        results[script] = run(script, extra + (QUICK[script] if args.quick else []))
        print(f"{script}: {json.dumps(results[script])[:300]}", file=sys.stderr)
    document = {"host": platform.node(), "processor": platform.processor(), "quick": args.quick,
                "summary": summary(results), "results": results}
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document))


if __name__ == "__main__":
    main()
