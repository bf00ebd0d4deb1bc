"""The training machinery around the core: what train.py runs.

stages.py (what one step of each stage does), tokens.py (the token cache VAR trains on),
optim.py (AdamW, the schedule), checkpoint.py (atomic writes, safe reads), device.py,
distributed.py (torchrun) and plots.py. It imports the core; the core never imports it.
"""
