"""flower-numpy: a small Flower app (NumPy logistic regression, synthetic data) for fedctl's examples."""
