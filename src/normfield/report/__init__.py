"""The reproduction report: report.md, report.html (figures embedded),
results.json and the tidy data as Parquet/CSV."""

from normfield.report.writer import write_report

__all__ = ["write_report"]
