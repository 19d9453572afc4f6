"""Reports of a study: a self-contained HTML page and its Markdown twin (see :mod:`.report`)."""
from .report import (REQUIRED_COLUMNS, ReportFigure, ReportInput, format_cell, format_seed_spread, load_report_input,
                     metric_table, ranking_table, render_html, render_markdown, seed_note, write_report)

__all__ = ["REQUIRED_COLUMNS", "ReportFigure", "ReportInput", "format_cell", "format_seed_spread", "load_report_input",
           "metric_table", "ranking_table", "render_html", "render_markdown", "seed_note", "write_report"]
