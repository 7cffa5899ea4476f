"""The real command line with the stage list cut to the data stage and one small Bayesian fit.

The reliability tests run this in a subprocess (``python tests/one_fit_cli.py run ...``): a full run
compiles some twenty models, which is minutes; one fit keeps the same code path (CLI entry, hash-seed
pin, staging, summary.json) in seconds.
"""

from __future__ import annotations

import bayesnqp.study as study
from bayesnqp.cli import main
from bayesnqp.stages.context import RunContext


def one_bayesian_fit(ctx: RunContext) -> None:
    from bayesnqp.bayes import panel as bp
    from bayesnqp.stages.bayesian import render_bayes

    sec = ctx.report.section("bayes_re", "One Bayesian fit")
    result = ctx.guarded("bayes_re", lambda: bp.fit_random_effects(ctx.study.frame, list(ctx.study.roles.controls),
                                                                   ctx.settings, None), sec)
    if result is not None:
        render_bayes(ctx, sec, result)


if __name__ == "__main__":
    study.STAGES = [study.STAGES[0], ("Bayesian panel models", one_bayesian_fit)]
    study.BAYES_STAGES = {one_bayesian_fit}
    main()
