"""Benchmarks of fedit against baselines (hand-written loop, Shepherd-style rounds); `fedit bench` runs them."""
