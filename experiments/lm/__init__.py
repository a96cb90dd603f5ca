"""The recurrent language-model recipe that ``experiments.char_lm``, ``experiments.word_lm``
and ``experiments.lm_compare`` share, in the Flax examples' shape:

* :mod:`experiments.lm.config`: ``LMConfig``, every setting of an LM run (the common
  training settings, Hessian-free's, and the LM's own) as one frozen dataclass; each
  experiment subclasses it with its own defaults.
* :mod:`experiments.lm.train`: ``run(config, workdir)``: data, model, truncated-BPTT
  training with checkpoints and resume, evaluation, samples, ``results.json``; and
  sampling from a trained workdir.

This package is not an experiment itself (nothing here reads flags); the experiments
are the modules that import it.
"""
