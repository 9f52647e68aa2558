"""Helpers shared by the test modules (on ``sys.path`` through ``pythonpath = tests`` in setup.cfg).

* :mod:`support.models`: tiny K-Net configs, random inputs, a tiny registered synthetic dataset;
* :mod:`support.semantic`: tiny semantic K-Net models (``KNetSemantic``), inputs and configs;
* :mod:`support.official_layouts`: the official K-Net checkpoints' key layouts (names and shapes);
* :mod:`support.conversion_targets`: the converter tests' target models (meta device) and exact-fill check;
* :mod:`support.postprocessing`: probability maps and rules shared by the post-processing tests;
* :mod:`support.parity`: the reference environments' shims and modules (``tests/parity/``);
* :mod:`support.toy`: toy models and loaders for the engine tests;
* :mod:`support.scripts`: the repository's scripts (``train_net.py``, ``tools/*.py``, ``demo/demo.py``) as
  modules, imported one way.
"""
