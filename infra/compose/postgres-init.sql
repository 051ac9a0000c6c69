-- Run once by the postgres image on an empty volume: the Prefect server's database (MLflow's is POSTGRES_DB).
CREATE DATABASE prefect OWNER potstill;
