# Two commands a newcomer needs: `make flywheel` (the main job) and `make test`.
# Both set everything up themselves: uv (from PyPI if missing) and the locked environment.
SHELL := /bin/bash
UV := python3 -m uv
# The services' own settings (telemetry off, the ephemeral server's start-up timeout) are applied by
# `lwd` itself (flows/service_defaults.py), so a command behaves the same with or without make.
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup flywheel test test-slow bench clean

# Bytecode compiled once here: with PYTHONDONTWRITEBYTECODE set (as on CI machines) every process
# would otherwise compile prefect, mlflow and jax from source again (17.7 s -> 8.1 s per `lwd` start).
setup:
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv>=0.13,<0.14"
	@$(UV) sync --frozen --quiet --compile-bytecode
	@$(UV) run --frozen --no-sync python -m compileall -q lwd_core tasks flows deployments

# The whole flywheel on embedded defaults with a small fleet; --auto-approve lets a passing gate stand
# in for the reviewer so it runs unattended (drop it to approve in the MLflow UI or with `lwd approve`).
FLYWHEEL_ARGS ?= --config configs/small.yaml --rounds 3 --auto-approve
flywheel: setup
	$(UV) run --frozen lwd flywheel $(FLYWHEEL_ARGS) $(ARGS)

# Two pytest workers, a test file each: the suite spends much of its time waiting on servers and
# child processes, which a second worker fills (TEST_WORKERS=0 runs it in one process).
TEST_WORKERS ?= 2
test: setup
	$(UV) run --frozen lint-imports
	$(UV) run --frozen pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

# The performance benchmarks in one run (docs/results/performance.json); QAM=path/to/a/checkout of
# github.com/ColinQiyangLi/qam adds the learner's side-by-side with the reference.
bench: setup
	$(UV) run --frozen python bench/run_all.py $(if $(QAM),--qam $(QAM)) $(ARGS)

test-slow: setup
	$(UV) run --frozen pytest -m slow $(ARGS)

clean:
	rm -rf .lwd .pytest_cache
