"""The run-code version: with a run's config, it decides whether a committed run is still valid.

A committed run stays valid while the numbers the code computes stay the same. The golden tests
(tests/test_goldens.py) make this honest: deterministic tiny-model runs of every method, the
shared-prompt scorer and SLMC, whose metric matrices, training statistics (each strategy's extra
loss among them) and adapter fingerprints are stored in tests/goldens/. A change that moves any of
them fails the suite until RUN_CODE_VERSION is bumped and the goldens are regenerated with
`make goldens`, which refuses to rewrite moved goldens under an unchanged version. A refactor that
keeps the goldens changes nothing here, and every committed run stays done.

Versions:
  1  the first cpu grid (27 runs).
  2  CPPO's category weights and batch statistics, SGD for GEM / A-GEM, L2P's own learning rate.
"""
RUN_CODE_VERSION = 2
