"""Turn a study spec into Ray Tune trials, collect results, make tables, reports and exports; the ``sweep`` CLI."""
