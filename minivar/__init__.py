"""minivar: a small, readable implementation of VAR (Tian et al., 2024),
"Visual Autoregressive Modeling: Scalable Image Generation via Next-Scale Prediction".

The core, in reading order: quantizer.py -> tokenizer.py -> mask.py -> transformer.py ->
sampling.py -> var.py; then ar.py (the raster baseline) and data.py (CIFAR-10).
Around it: training/ (what train.py runs), applications/ (editing, rejection sampling)
and studies/ (benchmarks, FID, complexity, scaling). The core imports none of them.
"""
