"""Report tables: quoted reference numbers (``references.yaml``) and measured results, rendered as
Markdown, LaTeX and CSV (``tables``)."""
