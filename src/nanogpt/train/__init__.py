"""Training: `setup` builds a trainer from flags and a checkpoint; `loop.Trainer.run` is the one loop.

Read in the run's order: setup.py -> loop.py -> step.py (the device work) and state.py (the run's
progress) -> readback.py (losses read back from the device). Nothing here runs on import.
"""
