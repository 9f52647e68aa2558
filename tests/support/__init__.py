"""Helpers shared by the test modules (on ``sys.path`` through ``pythonpath = tests`` in setup.cfg).

* :mod:`support.models`: tiny K-Net configs, random inputs, a tiny registered synthetic dataset;
* :mod:`support.scripts`: the repository's scripts (``train_net.py``, ``tools/*.py``, ``demo/demo.py``) as
  modules, imported one way.
"""
