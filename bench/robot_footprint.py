"""What a robot's computer installs and loads: the robot-side distribution (infra/robot, lwd_core.robot)
against today's robot process (the fleet actor, which needs the whole project environment); prints JSON.

Builds the lwd-robot wheel and installs it into a fresh virtual environment, installs the project's
locked runtime dependencies (no dev tools) into another, and measures both environments' installed size and the import time of what each
robot process loads before it can act (median of fresh processes). It also runs a release's
policy.onnx in the robot environment and compares its actions with the JAX policy's on the same inputs.

    uv run python bench/robot_footprint.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROBOT_IMPORTS = "import lwd_core.robot, onnxruntime"
# Today's robot process: the fleet actor's entry point, the actor, and JAX/Flax to load a policy.
ACTOR_IMPORTS = "import flows.fleet, lwd_core.fleet.actor, lwd_core.algo.checkpoint, jax"


def _size_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6, 1)


def _import_seconds(python: str, imports: str, repeats: int, cwd: Path, env: dict[str, str]) -> float:
    code = f"import time; t = time.perf_counter(); {imports}; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, cwd=cwd,
                                 env=env).stdout.split()[-1]) for _ in range(repeats)]
    return round(statistics.median(runs), 2)


def _uv(*args: str) -> None:
    uv = [shutil.which("uv")] if shutil.which("uv") else ["python3", "-m", "uv"]  # as the Makefile finds it
    subprocess.run([*uv, *args], check=True, capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from lwd_core.algo.learner import Learner, LearnerSpec
    from lwd_core.algo.portable import export_acting
    from lwd_core.algo.text import MAX_TOKENS, VOCAB_SIZE
    from lwd_core.config import AlgoConfig
    from lwd_core.suite import ACTION_DIM, OBS_DIM

    with tempfile.TemporaryDirectory(prefix="lwd-robot-footprint-") as tmp:
        work = Path(tmp)
        _uv("build", str(ROOT / "infra" / "robot"), "--wheel", "-o", str(work / "dist"))
        wheel = next((work / "dist").glob("*.whl"))
        venv = work / "robot-venv"
        _uv("venv", str(venv), "--python", sys.executable)
        robot_python = str(venv / "bin" / "python")
        _uv("pip", "install", "--python", robot_python, str(wheel))

        # The reference size's policy (LWD, best of 8 as configs/small.yaml acts), exported here, run there.
        algo = AlgoConfig().with_agent("lwd", critic_heads=2, best_of_n=8)
        learner = Learner(LearnerSpec.from_config(algo, OBS_DIM, ACTION_DIM, "lwd"))
        params = learner.acting_params(learner.init(0))
        (work / "policy.onnx").write_bytes(export_acting(learner, params))
        rng = np.random.default_rng(0)
        inputs = {"obs": rng.normal(size=(1, OBS_DIM)).astype(np.float32),
                  "tokens": rng.integers(1, VOCAB_SIZE, size=(1, MAX_TOKENS)).astype(np.int32),
                  "noise": rng.standard_normal(learner.agent.acting_noise_shape(1), np.float32)}
        np.savez(work / "inputs.npz", **inputs)
        expected = np.asarray(learner.agent.act_from_noise(params, *inputs.values())).reshape(-1, ACTION_DIM)
        act = ("import numpy as np, time, lwd_core.robot as r; p = r.PortablePolicy(open('policy.onnx', 'rb').read()); "
               "i = np.load('inputs.npz'); a = p.act_from_noise(i['obs'], i['tokens'], i['noise']); "
               "t = time.perf_counter(); [p.act_from_noise(i['obs'], i['tokens'], i['noise']) for _ in range(50)]; "
               "np.save('actions.npy', a); print((time.perf_counter() - t) / 50)")
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        act_s = float(subprocess.run([robot_python, "-c", act], capture_output=True, text=True, check=True, cwd=work,
                                     env=clean).stdout.split()[-1])
        max_diff = float(np.abs(np.load(work / "actions.npy") - expected).max())

        # Today's robot process runs in the project's runtime environment: the lock without its dev group.
        requirements = work / "requirements.txt"
        _uv("export", "--project", str(ROOT), "--frozen", "--no-dev", "--no-hashes", "--no-emit-project",
            "-o", str(requirements))
        actor_venv = work / "actor-venv"
        _uv("venv", str(actor_venv), "--python", sys.executable)
        actor_python = str(actor_venv / "bin" / "python")
        _uv("pip", "install", "--python", actor_python, "-r", str(requirements))

        site = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        robot_site, actor_site = (Path(subprocess.run([python, "-c", site], capture_output=True, text=True,
                                                      check=True).stdout.strip()) for python in (robot_python, actor_python))
        print(json.dumps({
            "bench": "robot_footprint",
            "robot_side": {"wheel_kb": round(wheel.stat().st_size / 1e3), "installed_mb": _size_mb(robot_site),
                           "import_s": _import_seconds(robot_python, ROBOT_IMPORTS, args.repeats, work, clean),
                           "imports": ROBOT_IMPORTS},
            "today_actor": {"installed_mb": _size_mb(actor_site),
                            "import_s": _import_seconds(actor_python, ACTOR_IMPORTS, args.repeats, ROOT,
                                                        {**clean, "PYTHONPATH": str(ROOT)}),
                            "imports": ACTOR_IMPORTS},
            "portable_policy": {"onnx_mb": round((work / "policy.onnx").stat().st_size / 1e6, 1),
                                "act_ms": round(act_s * 1e3, 2), "max_abs_diff_vs_jax": max_diff,
                                "network": "hidden [512]*4, flow_steps 10, best_of_n 8"},
        }, indent=2))


if __name__ == "__main__":
    main()
