"""Shared evaluation of hand-crafted and learned optimizers: metrics, tuning, tables, plots."""
