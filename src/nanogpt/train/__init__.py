"""Training: `setup.build_trainer` = the gate (gate.py: everything from outside checked once, into a trusted
`Run`) then the parts built; `loop.Trainer.run` is the one loop every front end drives.

Read in the run's order: gate.py -> setup.py -> loop.py (one iteration on one screen) -> step.py (the device
work), state.py (the run's progress), best.py (what to keep), readback.py (losses read back from the device),
saving.py (checkpoints and the run folder's lock). Nothing here runs on import.
"""
