"""Create the database named in DATABASE_URL if it does not exist (never drops anything)."""

import os
import sys

import dj_database_url
import psycopg
from psycopg import sql

cfg = dj_database_url.parse(os.environ.get("DATABASE_URL", "postgres://localhost:5432/batchplatform"))
params = {
    "host": cfg.get("HOST") or "localhost",
    "port": cfg.get("PORT") or 5432,
    "user": cfg.get("USER") or os.environ.get("PGUSER", "postgres"),
    "password": cfg.get("PASSWORD") or None,
    "dbname": "postgres",
}
try:
    with psycopg.connect(**params, autocommit=True, connect_timeout=5) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [cfg["NAME"]]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(cfg["NAME"])))
            print(f"created database {cfg['NAME']}")
except psycopg.OperationalError as exc:
    sys.exit(f"cannot reach Postgres at {params['host']}:{params['port']}: {exc}")
