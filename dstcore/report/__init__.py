"""Stage 8, report: figures, HTML tables and the rendered notebook."""
