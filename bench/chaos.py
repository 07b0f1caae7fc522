"""Faults on the production stack during a flywheel round; prints one JSON object (faults tried and
survived, and for each what happened).

The stack is infra/local_stack.py's: a Prefect server (two API workers + services) on PostgreSQL and
Redis, an MLflow server on PostgreSQL; PostgreSQL and Redis are private instances of this machine's
binaries, so stopping them touches nothing shared. Each fault gets a fresh stack and runs
`lwd flywheel --rounds 1 --auto-approve` (configs/tiny.yaml); when the round reaches the fault's
moment (read from the stack, never a fixed wait) the fault is injected and later healed. Survived means:

- the round finished, or finished when the same command was run again (resume on retry);
- no episode lost or duplicated: every episode a robot finished (its spool ledger) is in the online
  buffer exactly once, nothing left in raw/ or quarantined;
- no half-registered version served: the fleet's release is a registry version with a passed gate and
  a recorded approval, its checkpoint hashing to what was registered (the rollout's own rule);
- the operator could read what went wrong: the command's output names the failing service.

    uv run python bench/chaos.py [--faults NAME ...]   (tests/test_chaos.py runs each, marked slow)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows.service_defaults import apply_service_defaults  # noqa: E402
from infra.local_stack import LocalStack, wait_for  # noqa: E402

CONFIG = ROOT / "configs" / "tiny.yaml"
LWD = Path(sys.executable).parent / "lwd"
ROUND_TIMEOUT_S = 2400  # a round on a loaded 2-core machine, waits on the fault included


@dataclass(frozen=True)
class Fault:
    name: str
    moment: str  # when it strikes in round 1: "upload" (the fleet's first episode; ingest follows) or "train"
    inject: Callable[[LocalStack, Path], None]  # breaks something, heals it, returns
    operator_sees: str  # a regex the run's output must match: the failing service named


def _fleet_uploading(data: Path) -> bool:
    """Round 1's fleet has uploaded its first episode (round 0 runs no fleet); its ingest is next. An ingest
    flow lasts about a second, too short to be caught running by polling."""
    raw = data / "store" / "raw"
    return raw.exists() and any(raw.rglob("*.parquet"))


def _flow_running(stack: LocalStack, flow_name: str, nth: int) -> bool:
    """Whether the ``nth`` run of ``flow_name`` (1: the first) is running (round 0 trains once too)."""
    rows = stack.query(stack.prefect_db, "SELECT r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id "
                                         f"WHERE f.name = '{flow_name}' ORDER BY r.created")
    return len(rows) >= nth and rows[nth - 1][0] == "RUNNING"


def restart_postgres(stack: LocalStack, data: Path) -> None:
    stack.postgres.restart(down_s=10)


def stop_redis_30s(stack: LocalStack, data: Path) -> None:
    stack.redis.restart(down_s=30)


def kill_prefect_server(stack: LocalStack, data: Path) -> None:
    # The API workers and the services process die as in a node loss, and come back on the same port.
    for name in ("prefect-api", "prefect-services"):
        stack.servers[name].stop(signal.SIGKILL)
    time.sleep(5)
    for name in ("prefect-api", "prefect-services"):
        stack.servers[name].start()


def mlflow_down_at_registration(stack: LocalStack, data: Path) -> None:
    # The round's training commits its checkpoint, then registers it: the server goes down in between.
    store = data / "store" / "checkpoints"
    committed = set(store.rglob("_MANIFEST.json")) if store.exists() else set()
    wait_for(lambda: set(store.rglob("_MANIFEST.json")) - committed, "the round's checkpoint", 900)
    stack.servers["mlflow"].stop(signal.SIGKILL)
    time.sleep(30)
    stack.servers["mlflow"].start()


def fill_the_store(stack: LocalStack, data: Path) -> None:
    # The object store's filesystem (a tmpfs the size of a small disk) left with no free byte for 30 s.
    store = data / "store"
    filler = store / ".filler"
    try:
        with open(filler, "wb", buffering=0) as handle:  # unbuffered: closing it flushes nothing more
            try:
                os.posix_fallocate(handle.fileno(), 0, shutil.disk_usage(store).free)
            except OSError:
                pass
            handle.seek(0, os.SEEK_END)
            while True:  # whatever fallocate left: the last blocks
                try:
                    handle.write(b"\0" * 4096)
                except OSError:
                    break
        time.sleep(30)
    finally:
        filler.unlink(missing_ok=True)


PREFECT_FAILING = r"the Prefect API is failing|error: the Prefect API"  # flows/service_defaults.py, flows/cli.py
FAULTS = {fault.name: fault for fault in (
    # What the operator must find in the run's output or the fleet's logs: the failing service's own
    # trace, not any line that happens to name it.
    Fault("postgres-restart", "train", restart_postgres, PREFECT_FAILING),
    Fault("redis-stopped-30s", "upload", stop_redis_30s, PREFECT_FAILING),
    Fault("prefect-server-killed", "train", kill_prefect_server, PREFECT_FAILING),
    Fault("mlflow-down-at-registration", "train", mlflow_down_at_registration, r"Retrying.*/api/2\.0/mlflow/"),
    Fault("store-full-during-ingest", "upload", fill_the_store, r"No space left on device"),
)}


def _mount_small_store(store: Path) -> Callable[[], None]:
    store.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(store)], check=True, capture_output=True)
    return lambda: subprocess.run(["umount", "-l", str(store)], check=False, capture_output=True)


def can_mount_tmpfs() -> bool:
    probe = Path(tempfile.mkdtemp(prefix="lwd-mount-probe-"))
    try:
        _mount_small_store(probe / "store")()
        return True
    except (subprocess.CalledProcessError, FileNotFoundError):
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def run_round(env: dict[str, str], log: Path, started: list[subprocess.Popen]) -> subprocess.Popen:
    """`lwd flywheel` in a session of its own, so that it and its fleet can be stopped together."""
    with log.open("ab") as out:
        started.append(subprocess.Popen([str(LWD), "flywheel", "--rounds", "1", "--auto-approve"], env=env,
                                        stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True))
    return started[-1]


def check_round(stack: LocalStack, data: Path) -> list[str]:
    """What the fault broke, by the rules above ([]: nothing)."""
    from lwd_core.config import load_config
    from lwd_core.data.ingest import pending_raw
    from lwd_core.data.layout import buffer_prefix
    from lwd_core.fleet.coordinator import Coordinator
    from lwd_core.fleet.edge import EdgeClient
    from lwd_core.promotion import CHAMPION, RELEASE_PREFIX
    from lwd_core.store import open_store
    from tasks import mlflow_adapter
    from tasks.rollout import release_of

    config = load_config(CONFIG, data_dir=data, tracking={"mlflow_uri": stack.mlflow_url})
    store = open_store(config)
    problems = []
    finished: set[str] = set()
    for spool in (data / "spool").iterdir() if (data / "spool").exists() else ():
        edge = EdgeClient(spool, store)
        if edge.flush().failed:
            problems.append(f"spool {spool.name} could not upload everything")
        finished |= {record["episode_id"] for record in edge.finished()}
    ingested = subprocess.run([str(LWD), "ingest"], env=stack.lwd_env(data, CONFIG), capture_output=True,
                              text=True, timeout=900, cwd=ROOT)  # what the fleet uploaded while stopping
    if ingested.returncode != 0:
        problems.append(f"the final ingest failed: {ingested.stderr.strip()[-300:]}")
    ids = [key.rsplit("/", 1)[1].removesuffix(".parquet") for key in store.list(buffer_prefix("online"), ".parquet")]
    if len(ids) != len(set(ids)):
        problems.append(f"{len(ids) - len(set(ids))} episodes in the buffer twice")
    if lost := finished - set(ids):
        problems.append(f"{len(lost)} finished episodes not in the buffer")
    if not finished:
        problems.append("no robot finished an episode: the round never ran")
    if pending_raw(store) or store.list("quarantine"):
        problems.append(f"{len(pending_raw(store))} uploads left in raw/, {len(store.list('quarantine'))} quarantined")
    stable = Coordinator(store).desired().get("stable")
    if not stable:
        problems.append("the fleet has no release")
    else:
        version = mlflow_adapter.model_version(config, stable["version"].removeprefix(RELEASE_PREFIX))
        refusal = version.shipping_refusal(mlflow_adapter.alias_version(config, CHAMPION))
        if refusal:
            problems.append(f"the fleet runs {stable['version']}, which must not ship: {refusal}")
        elif release_of(store, version).policy_sha256 != stable["policy_sha256"]:
            problems.append(f"the fleet's {stable['version']} is not the registered checkpoint")
    return problems


def run_fault(fault: Fault, workdir: Path) -> dict:
    """One fault on a fresh stack: the round, the fault at its moment, a retry if the round failed, the
    checks. Returns what happened."""
    workdir.mkdir(parents=True, exist_ok=True)
    data, log = workdir / "data", workdir / "flywheel.log"
    unmount = _mount_small_store(data / "store") if fault.name == "store-full-during-ingest" else (lambda: None)
    result = {"fault": fault.name, "moment": fault.moment}
    rounds: list[subprocess.Popen] = []
    try:
        with LocalStack(workdir / "stack") as stack:
            env = stack.lwd_env(data, CONFIG)
            started = time.monotonic()
            first = run_round(env, log, rounds)
            # Round 0 trains once: round 1's training is the second.
            moment = ((lambda: _flow_running(stack, "train", 2)) if fault.moment == "train"
                      else (lambda: _fleet_uploading(data)))
            wait_for(lambda: first.poll() is not None or moment(), f"round 1's {fault.moment}", ROUND_TIMEOUT_S)
            result["injected"] = first.poll() is None
            before_fault = {path: path.stat().st_size for path in [log, *(data / "logs").glob("*.log")] if path.exists()}
            if result["injected"]:
                fault.inject(stack, data)
            result["first_run_rc"] = first.wait(timeout=ROUND_TIMEOUT_S)
            if result["first_run_rc"] != 0:  # resume on retry: the same command again
                result["retry_rc"] = run_round(env, log, rounds).wait(timeout=ROUND_TIMEOUT_S)
            result["minutes"] = round((time.monotonic() - started) / 60, 1)
            output = ""  # what the operator read from the fault on: the run's output and the fleet's logs
            for path in [log, *sorted((data / "logs").glob("*.log"))]:
                with path.open("rb") as handle:
                    handle.seek(before_fault.get(path, 0))
                    output += handle.read().decode(errors="replace") + "\n"
            seen = [line for line in output.splitlines() if re.search(fault.operator_sees, line)]
            result["operator_saw"] = seen[0][:300] if seen else None
            problems = [] if result["injected"] else ["the round ended before the fault's moment"]
            if result.get("retry_rc", result["first_run_rc"]) != 0:
                problems.append("the round did not finish, not even on retry")
            if not seen:
                problems.append("no error naming the failing service in the run's output")
            problems += check_round(stack, data)
            result["problems"] = problems
            result["survived"] = not problems
            result["log"] = str(log)
    finally:
        for process in rounds:  # a bench stopped half-way leaves no flywheel or robot behind
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        unmount()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", nargs="+", choices=sorted(FAULTS), default=list(FAULTS))
    parser.add_argument("--workdir", type=Path, default=None, help="kept for the logs (default: a temporary one)")
    args = parser.parse_args()
    apply_service_defaults()
    # Stopped from outside (Ctrl-C, kill): the stack's `with` blocks still stop what they started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lwd-chaos-"))
    results = []
    for name in args.faults:
        try:
            results.append(run_fault(FAULTS[name], workdir / name))
        except Exception as exc:  # noqa: BLE001 - one fault's harness failing still reports the others
            results.append({"fault": name, "survived": False, "problems": [f"the bench failed: {exc!r}"[:2000]]})
    print(json.dumps({"bench": "chaos", "faults_tried": len(results),
                      "survived": sum(result["survived"] for result in results), "results": results}, indent=2))


if __name__ == "__main__":
    main()
