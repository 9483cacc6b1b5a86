"""The procedures of single lecture experiments, one module each: the LR range test and cyclical learning rates
(``range_test``, ``cyclical``), epoch training with reduce-on-plateau, warm restarts and snapshot ensembles
(``epochs``, ``restarts``, ``restarts_plots``, ``ensembles``), trajectories on 2D surfaces (``trajectories``),
loss landscapes (``landscape``), tuned-learning-rate curves (``tuned``), learning-rate sweeps (``sweep``) and
step directions (``directions``).

Each serves one entry point under ``experiments/`` and is tested in ``tests/``. They build on the shared
comparison in :mod:`learned_opt.evaluation` (and below); nothing there imports this package.
"""
