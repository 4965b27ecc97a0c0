"""The live training UI (Textual): `app.run_tui(engine)` runs it. Importing this package loads nothing."""
