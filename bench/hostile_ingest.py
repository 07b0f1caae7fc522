"""What a hostile upload costs ingestion: time and peak memory for one object, each case in a fresh
process, against an honest 1,000-step episode and a process that only imports. Prints JSON.

    uv run python bench/hostile_ingest.py
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, re, sys, time
from lwd_core.data.ingest import ingest_batch, pending_raw
from lwd_core.data.validation import Expectations
from lwd_core.store import ObjectStore
from lwd_core.suite import ACTION_DIM, OBS_DIM, TASK_SUITE
store = ObjectStore(sys.argv[1])
expect = Expectations.for_suite(TASK_SUITE, ["robot-00"], ["policy-v1"])
started = time.perf_counter()
outcomes = ingest_batch(store, pending_raw(store), expect).outcomes if sys.argv[2] == "ingest" else []
print(json.dumps({"seconds": round(time.perf_counter() - started, 3),
                  "peak_rss_mb": round(int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1]) / 1024, 1),
                  "status": [o.status for o in outcomes], "reasons": [o.reasons[:1] for o in outcomes]}))
"""


def _frame_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def cases() -> dict[str, bytes]:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_episode
    from corpus import layout_2_file, with_footer

    from lwd_core.store import now_us
    from lwd_core.suite import ACTION_DIM, OBS_DIM

    honest = make_episode(steps=1000, obs_dim=OBS_DIM, action_dim=ACTION_DIM, robot_id="robot-00",
                          task_id="cycle-three", policy_version="policy-v1", success=False,
                          timestamps_us=now_us() - 10**8 + __import__("numpy").arange(1000) * 50_000)
    return {
        "honest-1000-steps": honest.to_parquet_bytes(),
        "two-million-rows": _frame_bytes(pl.DataFrame({"step": pl.zeros(2_000_000, pl.Int32, eager=True)})),
        "megabyte-instruction": _frame_bytes(honest.to_frame().with_columns(pl.lit("x" * 8_000_000).alias("instruction"))),
        "megabyte-instruction-in-footer": with_footer(honest, lambda footer: footer | {"lwd.instruction": "x" * 4_000_000}),
        # Stored once, in a dictionary page, with nothing saying "dictionary": 4 GB read row by row.
        "megabyte-instruction-once-over-1000-rows": _table_bytes(_replaced(honest.to_arrow(), instruction=pa.DictionaryArray
                                                                           .from_arrays(pa.array(np.zeros(1000, np.int32)),
                                                                                        pa.array(["x" * 4_000_000]))),
                                                                 store_schema=False),
        # 20,000 dictionary-encoded zeros per observation: 80 MB per vector column from a few kB.
        "million-value-vectors": layout_2_file(_replaced(honest._step_table(), obs=_zeros(1000, 20_000),
                                                         next_obs=_zeros(1000, 20_000)),
                                               honest, use_dictionary=True, compression="zstd"),
    }


def _replaced(table: pa.Table, **columns: pa.Array) -> pa.Table:
    for name, column in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def _table_bytes(table: pa.Table, **options) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **options)
    return sink.getvalue().to_pybytes()


def _zeros(rows: int, width: int) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32)),
                                    pa.array(np.zeros(rows * width, np.float32)))


def main() -> None:
    results = {}
    baseline = subprocess.run([sys.executable, "-c", CHILD, "memory://unused", "imports-only"], cwd=ROOT,
                              capture_output=True, text=True, check=True)
    results["imports-only"] = json.loads(baseline.stdout.strip().splitlines()[-1])
    for name, data in cases().items():
        with tempfile.TemporaryDirectory() as tmp:
            key = Path(tmp) / "raw" / "2026-11-27" / "robot-00" / f"{name}.parquet"
            key.parent.mkdir(parents=True)
            key.write_bytes(data)
            run = subprocess.run([sys.executable, "-c", CHILD, Path(tmp).as_uri(), "ingest"], cwd=ROOT,
                                 capture_output=True, text=True, check=True)
            results[name] = {"bytes": len(data), **json.loads(run.stdout.strip().splitlines()[-1])}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
