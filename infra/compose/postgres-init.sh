# Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d, sourced or run
# with the container's environment) as the bootstrap superuser POSTGRES_USER, which is kept for
# administration only. Every service gets its own LOGIN role, neither superuser nor allowed to create
# databases or roles, owning its databases; no database is open to PUBLIC, so a service's role cannot
# connect to another service's database. infra/k8s/postgres.yaml holds the same script (a ConfigMap).
: "${POSTGRES_MLFLOW_PASSWORD:?set POSTGRES_MLFLOW_PASSWORD}" "${POSTGRES_PREFECT_PASSWORD:?set POSTGRES_PREFECT_PASSWORD}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  --set mlflow_password="$POSTGRES_MLFLOW_PASSWORD" --set prefect_password="$POSTGRES_PREFECT_PASSWORD" <<'SQL'
CREATE ROLE mlflow LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'mlflow_password';
CREATE ROLE prefect LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'prefect_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE DATABASE prefect OWNER prefect;
REVOKE CONNECT, TEMPORARY ON DATABASE mlflow, mlflow_auth, prefect FROM PUBLIC;
SQL
