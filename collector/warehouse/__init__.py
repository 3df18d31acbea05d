"""The study warehouse: bundles from object storage as Parquet, with a DuckDB catalogue of views."""
