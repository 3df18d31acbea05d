"""Operators of the technician's page: password rules (passwords), the users table (store), ``collector user`` (cli)."""
