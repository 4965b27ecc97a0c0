"""Regenerate docs/screenshot.svg from a real run: `python docs/screenshot.py [DATA_DIR] [STEPS]`
(no DATA_DIR: the bundled corpus, as `nanogpt train` prepares it).

Trains cpu-small (the CPU default) for STEPS steps (default 300) under the UI at 100x30 and saves the
final screen. The times it shows are those of the machine it runs on.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from nanogpt.train.setup import build_trainer
from nanogpt.tui.app import TrainingApp

OUT = Path(__file__).resolve().parent / "screenshot.svg"


async def shoot(app: TrainingApp) -> None:
    async with app.run_test(size=(100, 30)) as pilot:
        while app.finished is None:
            await pilot.pause(0.2)
        await pilot.pause(3.5)  # the last chart draw
        app.save_screenshot(OUT.name, path=str(OUT.parent))
        await pilot.press("q")


def main() -> None:
    settings = {"validation_interval": 50}  # checkpoints in out/, or the first free out-N/ when out/ holds a run
    if len(sys.argv) > 1:
        settings["data_dir"] = sys.argv[1]
    else:  # what `nanogpt train` trains on when given no data: the bundled corpus, default tokenizer
        from nanogpt.prepare import bundled_dataset

        settings["data_dir"] = str(bundled_dataset())
    settings["steps"] = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    app = TrainingApp(build_trainer(settings, preset="cpu-small"))
    asyncio.run(shoot(app))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
