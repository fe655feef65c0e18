"""Flower engine: the only fedit package that imports flwr (install with `pip install fedit[flower]`)."""
