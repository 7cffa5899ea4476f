"""bayesnqp: the digital-agglomeration / new-quality-productive-forces city-panel study, rebuilt.

Stages (one module each): ``data`` (read, validate, geography) -> ``measures`` (entropy index,
location quotient) -> ``frequentist`` (the oracles) -> ``bayes`` (hierarchical models) ->
``checks`` (convergence, agreement, PPC) -> ``report``. ``study.run_study`` chains them.
"""

__version__ = "0.1.0"
