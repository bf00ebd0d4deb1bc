"""Studies and measuring tools, each a `python -m minivar.studies.<name>` command that prints a
table and writes JSON: bench (speed and test loss), complexity (AR vs VAR generation cost),
evaluate with metrics (FID), scaling (the scaling-law study). They use the core and the
training machinery; nothing imports them.
"""
