-- Create (or update) the project's login role and database. Idempotent: run by deploy/stack.sh on
-- every `up`, as the postgres superuser over the private unix socket, with psql variables
-- user, password and db. The role is not a superuser: it owns its database (so it can create
-- schemas and tables there; public is owned by pg_database_owner since PostgreSQL 15) and may
-- create roles and databases for tests.
\set ON_ERROR_STOP on

SELECT format('CREATE ROLE %I LOGIN', :'user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec

SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER CREATEDB CREATEROLE PASSWORD %L', :'user', :'password') \gexec

SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec

SELECT format('ALTER DATABASE %I OWNER TO %I', :'db', :'user') \gexec
