"""Stage 5, the report: the runs table, figures, the trust verdict, the written report and the
console rendering of progress and tables."""
