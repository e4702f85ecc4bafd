"""PostgreSQL writers, migrations and the offsets-in-transaction consumer."""
