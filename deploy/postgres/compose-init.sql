-- First start of deploy/compose.yaml's PostgreSQL (docker-entrypoint-initdb.d, run once on an
-- empty data volume as POSTGRES_USER): the schema registry keeps its schemas in a database of
-- its own, so schema ids survive registry restarts and never mix with the settle tables.
CREATE DATABASE registry OWNER settle;
