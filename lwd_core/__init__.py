"""LWD core library: algorithms, data, simulation and fleet. Imports no Prefect and no MLflow."""

__version__ = "0.1.0"
