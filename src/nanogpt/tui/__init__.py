"""The live training UI (Textual): `app.run_tui(trainer)` runs it. Importing this package loads nothing."""
