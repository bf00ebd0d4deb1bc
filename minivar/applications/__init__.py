"""What a trained VAR can do beyond plain sampling, with no extra training: zero-shot
editing (paper §4.4) and best-of-N rejection sampling by the model's own implicit
classifier. They use only the core; sample.py and the FID study expose them.
"""
