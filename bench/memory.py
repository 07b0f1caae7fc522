"""Peak host memory of loading a training run's data against the buffer's size; prints one JSON object.

For each buffer size (default 10k, 100k and 1M transitions, online episodes of 200 steps written to a
local store with labels and a snapshot, as ingest would leave them), a fresh process loads an online
training run's transitions of the snapshot (:class:`lwd_core.algo.transition_cache.TransitionCache`:
every episode read, n-step transitions built from its labelled rewards) and reports its peak resident
memory.
Episodes are read a block at a time and never kept, and each buffer is capped at
``algo.replay_capacity`` transitions, so the peak levels off at the cap instead of growing with the
buffer. ``--capacity`` sets the cap (default: the config's, 1M); the run without a cap is the contrast.
A second fresh process then loads them again: it takes the transitions the first one built
from the store's replay segments instead of reading and building every episode (``from_segments``).

    uv run python bench/memory.py [--sizes 10000 100000 1000000] [--capacity 100000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEPS = 200

_PLAN = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from lwd_core.algo.transition_cache import TransitionCache
from lwd_core.config import AlgoConfig
from lwd_core.data.snapshot import load_snapshot
from lwd_core.store import ObjectStore
store = ObjectStore({url!r})
start = time.perf_counter()
buffers = TransitionCache().load(store, load_snapshot(store), AlgoConfig(replay_capacity={capacity}), "online")
rows = {{kind: 0 if data is None else len(data["obs"]) for kind, data in (("offline", buffers.offline),
                                                                        ("online", buffers.online))}}
print(json.dumps({{"seconds": time.perf_counter() - start, "rows": rows,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def write_buffer(url: str, transitions: int) -> None:
    """Online episodes (plus one offline one) with labels and a snapshot."""
    from lwd_core.config import AlgoConfig
    from lwd_core.data.labels import label_episode, write_labels
    from lwd_core.data.layout import buffer_key, put_episode
    from lwd_core.data.nstep import NStepSchedule
    from lwd_core.data.snapshot import build_snapshot
    from lwd_core.store import ObjectStore

    sys.path.insert(0, str(ROOT / "bench"))
    from ingest import fleet_episode

    store = ObjectStore(url)
    algo = AlgoConfig(hidden_dims=[32, 32])
    schedule = NStepSchedule.from_config(algo)
    rng = np.random.default_rng(0)
    labels = {"online": [], "offline": []}
    for index in range(max(1, transitions // STEPS) + 1):
        kind = "offline" if index == 0 else "online"
        episode = fleet_episode(rng, index, STEPS)
        put_episode(store, buffer_key(kind, episode.task_id, episode.episode_id), episode)
        labels[kind].append(label_episode(episode, algo.discount, schedule))
    for kind, rows in labels.items():
        write_labels(store, kind, rows)
    build_snapshot(store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--capacity", type=int, default=1_000_000, help="algo.replay_capacity (0: no cap)")
    args = parser.parse_args()
    points = []
    for size in args.sizes:
        url = Path(tempfile.mkdtemp(prefix=f"lwd-bench-memory-{size}-")).as_uri()
        started = time.perf_counter()
        write_buffer(url, size)
        written_s = time.perf_counter() - started
        row = {"buffer_transitions": size, "write_s": round(written_s, 1)}
        first = f"cap_{args.capacity}" if args.capacity else "no_cap"
        runs = [(args.capacity, first), (args.capacity, "from_segments")] + ([(0, "no_cap")] if args.capacity else [])
        for capacity, tag in runs:
            if tag == "no_cap" and first != tag:  # from the episodes, like the first load
                shutil.rmtree(Path(url.removeprefix("file://")) / "replay-segments", ignore_errors=True)
            out = subprocess.run([sys.executable, "-c", _PLAN.format(root=str(ROOT), url=url, capacity=capacity)],
                                 capture_output=True, text=True, check=True)
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            row[tag] = {"peak_rss_mb": round(measured["peak_rss_mb"]), "rows_loaded": measured["rows"],
                        "load_s": round(measured["seconds"], 1)}
        points.append(row)
    print(json.dumps({"bench": "memory", "steps_per_episode": STEPS, "capacity": args.capacity, "points": points}))


if __name__ == "__main__":
    main()
