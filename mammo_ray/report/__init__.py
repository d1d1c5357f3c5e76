"""The study's report: one module per table or figure family, each building a `render.Section` from frames it is
handed. Sections read no result tables and import no stages: the report stage (mammo_ray.stages.report) reads the
current tables, calls the sections and writes the Markdown / HTML (render.write_report)."""
