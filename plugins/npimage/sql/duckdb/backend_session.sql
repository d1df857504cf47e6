-- Session settings of the DuckDB that merges catalogues for npimage.backend.extract:
-- no progress bar in task logs.
SET enable_progress_bar = false;
