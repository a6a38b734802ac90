-- Runs once, when the PostgreSQL volume is new: MLflow's backend store beside detrforge's registry.
CREATE DATABASE mlflow OWNER detrforge;
