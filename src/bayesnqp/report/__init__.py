"""Report stage: paper-style tables, figures, maps and the HTML page."""
