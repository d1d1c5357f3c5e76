"""The study's report: figures and tables drawn from the stages' Parquet outputs."""
