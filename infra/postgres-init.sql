-- One PostgreSQL for both servers: Prefect needs pg_trgm; MLflow gets its own database.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE DATABASE mlflow OWNER lwd;
