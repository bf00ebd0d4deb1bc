"""minivar: a small, readable implementation of VAR (Tian et al., 2024),
"Visual Autoregressive Modeling: Scalable Image Generation via Next-Scale Prediction".

Reading order: data.py -> quantizer.py -> tokenizer.py -> mask.py -> var.py, then train.py.
"""
