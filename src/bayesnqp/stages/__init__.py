"""Stages of a run: each takes the RunContext, runs its analyses, and adds tables, figures and
summary.json blocks. ``study.STAGES`` lists them in order."""
