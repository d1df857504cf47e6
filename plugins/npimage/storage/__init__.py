"""Storage: the run folder layout, Parquet I/O, locks and the DuckDB warehouse."""
