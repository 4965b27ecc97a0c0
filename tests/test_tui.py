"""The training UI driven by Textual's pilot, with a real tiny GPT training on real Tiny Shakespeare."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from nanogpt import checkpoint
from nanogpt.runtime import machine
from nanogpt.cli import main
from nanogpt.train.setup import build_trainer
from nanogpt.plot import read_run
from nanogpt.tui.app import TrainingApp
from nanogpt.tui.widgets import SamplePager, SampleScreen, clock
from textual.widgets import Static

SIZE = (120, 40)
SUFFIXES = (".safetensors", ".config.json", ".training_log.json")
# 2 layers, 32 wide: a few ms per step on CPU, still a real GPT on real text
TINY = {
    "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 4, "eval_iters": 2,
    "device": "cpu", "compile": False, "dtype": "float32", "warmup_steps": 5, "validation_interval": 0,
    "tokens_to_generate": 40, "optimizer": "adamw",  # nanoGPT's recipe: size flags keep the preset's (issue 34)
}


@pytest.fixture(scope="module")
def char_data(shakespeare_dir: Path) -> Path:
    """The bundled Tiny Shakespeare, prepared at character level (the session's fixture)."""
    return shakespeare_dir


@pytest.fixture(autouse=True)
def one_torch_thread():
    # Tiny steps gain nothing from a second intra-op thread, and on a busy 2-core box its spin-waits
    # make them ~100x slower; restore the setting for the other tests.
    with machine.intra_op_threads(1):
        yield


def make_trainer(data: Path, out: Path, **settings):
    return build_trainer({**TINY, "data_dir": str(data), "out_dir": str(out), **settings})


async def wait_for(pilot, condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Let the app run until `condition()` holds (a generous limit only turns a hang into a failure)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await pilot.pause(0.05)


def checkpoint_files(stem: str) -> list[Path]:
    return [Path(stem + s) for s in SUFFIXES]


def test_chart_and_status_follow_training_and_q_saves_and_exits(char_data: Path, tmp_path: Path) -> None:
    trainer = make_trainer(char_data, tmp_path, steps=100_000, validation_interval=10)
    app = TrainingApp(trainer)

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            chart = app.chart
            await wait_for(pilot, lambda: len(chart.val_steps) >= 2, "two validation losses")
            await wait_for(pilot, lambda: chart.draws > 0 and chart.drawn_points >= 10, "a drawn chart")
            assert chart.train_steps[:3] == [1, 2, 3]
            assert all(0.5 < x < 10 for x in chart.train_losses)
            assert chart.val_steps[:2] == [10, 20]
            status = app.status_text()
            assert f"/{100_000}" in status and "ms/step" in status and "val " in status
            assert app.badge() == "RUNNING"
            await pilot.press("q")
            await wait_for(pilot, lambda: app.result is not None, "the run to stop")

    asyncio.run(drive())
    assert app.return_value == 0
    assert app.result.reason == "stopped"
    assert app.result.stem is not None
    assert all(p.is_file() for p in checkpoint_files(app.result.stem))
    assert app.result.stem.endswith(f"model_step_{app.result.step}")


def test_p_pauses_and_resumes_the_step_counter(char_data: Path, tmp_path: Path) -> None:
    trainer = make_trainer(char_data, tmp_path, steps=100_000)
    app = TrainingApp(trainer)

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.step >= 3, "a few steps")
            await pilot.press("p")
            assert app.badge() in ("PAUSING", "PAUSED")  # acknowledged at once, before the step ends
            await wait_for(pilot, lambda: app.badge() == "PAUSED", "the engine to pause")
            held = app.step
            await pilot.pause(0.5)
            assert app.step == held and trainer.state.step == held
            assert "PAUSED" in str(app.badge_widget.render())
            await pilot.press("p")
            await wait_for(pilot, lambda: app.step > held + 2, "steps after resuming")
            assert app.badge() == "RUNNING"
            draws = app.chart.draws
            await pilot.press("l")  # log-scaled loss axis: redrawn at once, and again as data comes
            await wait_for(pilot, lambda: app.chart.draws > draws, "a log-scale draw")
            assert app.chart.log_scale
            await pilot.press("q")
            await wait_for(pilot, lambda: app.result is not None, "the run to stop")

    asyncio.run(drive())


def test_g_shows_a_sample_and_escape_closes_it_and_training_goes_on(char_data: Path, tmp_path: Path) -> None:
    trainer = make_trainer(char_data, tmp_path, steps=100_000)
    app = TrainingApp(trainer)

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.step >= 3, "a few steps")
            await pilot.press("g")
            assert isinstance(app.screen, SampleScreen)
            screen = app.screen
            await wait_for(pilot, lambda: screen.text is not None, "the sampled text")
            held = app.step
            assert app.badge() == "PAUSED" and trainer.state.step == held
            # the popup shows what these weights sample (the engine's sampler is seeded by the step)
            assert screen.text == trainer.sample(40)
            assert len(screen.text) >= 10
            await pilot.press("escape")
            assert not isinstance(app.screen, SampleScreen)
            await wait_for(pilot, lambda: app.step > held + 2, "training to continue")
            await pilot.press("q")
            await wait_for(pilot, lambda: app.result is not None, "the run to stop")

    asyncio.run(drive())


def test_s_saves_a_checkpoint_without_stopping(char_data: Path, tmp_path: Path) -> None:
    trainer = make_trainer(char_data, tmp_path, steps=100_000)
    app = TrainingApp(trainer)

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.step >= 3, "a few steps")
            await pilot.press("s")
            await wait_for(pilot, lambda: app.last_saved is not None, "the checkpoint")
            saved = app.last_saved
            assert saved.stem == str(tmp_path / f"model_step_{saved.step}")
            assert all(p.is_file() for p in checkpoint_files(saved.stem))
            assert saved.stem in str(app.notice.render())
            await wait_for(pilot, lambda: app.step > saved.step + 2, "training to go on")
            await pilot.press("q")
            await wait_for(pilot, lambda: app.result is not None, "the run to stop")

    asyncio.run(drive())


def test_last_step_saves_and_waits_for_q_then_resume_starts_paused_with_history(
    char_data: Path, tmp_path: Path
) -> None:
    app = TrainingApp(make_trainer(char_data, tmp_path, steps=20, validation_interval=10))

    async def first_run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.finished is not None, "the last step")
            await pilot.pause(0.3)
            assert app.is_running and app.badge() == "DONE"  # still on screen with the final numbers
            assert app.status_text().startswith("step 20/20")
            await pilot.press("q")

    asyncio.run(first_run())
    assert app.return_value == 0 and app.result.reason == "completed"
    stem = str(tmp_path / "model_step_20")
    assert app.result.stem == stem
    first_losses = app.chart.train_losses

    # --schedule-steps 40: stretched over the new length (a finished run extended keeps its schedule otherwise)
    resumed = build_trainer({"steps": 40, "schedule_steps": 40, "out_dir": str(tmp_path), "device": "cpu"},
                            resume=stem)
    app2 = TrainingApp(resumed, start_paused=True)

    async def second_run() -> None:
        async with app2.run_test(size=SIZE) as pilot:
            chart = app2.chart
            await wait_for(pilot, lambda: app2.run_info is not None, "the run to start")
            await wait_for(pilot, lambda: chart.draws > 0, "the chart")
            await pilot.pause(0.5)
            assert app2.badge() == "PAUSED" and app2.step == 20 and resumed.state.step == 20
            # the time is the run's, the first 20 steps included (their logged durations), not this session's
            earlier = sum(e["duration_ms"] for e in checkpoint.read_log(stem)) / 1000
            assert earlier > 0 and app2.run_seconds() == pytest.approx(earlier)
            assert f"time {clock(earlier)}" in app2.status_text()
            # the longer run re-stretches the cosine schedule: the notice says so, with the rates
            notice = str(app2.notice.render())
            assert "--steps 20 -> 40" in notice and "re-stretched to end at step 40" in notice
            assert chart.train_steps == list(range(1, 21))
            assert chart.train_losses == pytest.approx(first_losses)
            assert chart.val_steps == [10, 20]
            await pilot.press("p")
            await wait_for(pilot, lambda: app2.finished is not None, "the resumed run to finish")
            assert chart.train_steps == list(range(1, 41))
            await pilot.press("q")

    asyncio.run(second_run())
    assert app2.result.reason == "completed" and app2.result.stem == str(tmp_path / "model_step_40")


def test_ctrl_c_twice_before_the_first_step_leaves_no_empty_run_folder(char_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs" / "new"  # neither folder exists yet: the run creates both
    app = TrainingApp(make_trainer(char_data, out, steps=100), start_paused=True)

    async def drive() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.badge() == "PAUSED", "the run to start, paused before step 1")
            await pilot.press("ctrl+c")
            await pilot.press("ctrl+c")
            await wait_for(pilot, lambda: app.result is not None, "the run to stop")

    asyncio.run(drive())
    assert app.result.reason == "stopped" and app.result.step == 0 and app.result.stem is None
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was saved, so nothing is left


def test_an_engine_error_is_shown_and_q_exits_with_1(char_data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the checkpoint folder should be")
    app = TrainingApp(make_trainer(char_data, blocker / "out", steps=3))

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.finished is not None, "the failed start")
            assert app.badge() == "ERROR"
            shown = str(app.error_widget.render())
            # found before the first step, not at the first save (runs.claim)
            assert "cannot write to --out-dir" in shown and app.finished.message in shown
            assert app.finished.step == 0
            await pilot.press("q")

    asyncio.run(drive())
    assert app.return_value == 1


def screen_lines(app: TrainingApp) -> list[str]:
    """What the terminal shows of the app's main screen, one string per row."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_the_screen_lays_out_whole_fields_and_the_sample_clears_the_axes(
    char_data: Path, tmp_path: Path, size: tuple[int, int]
) -> None:
    app = TrainingApp(make_trainer(char_data, tmp_path, steps=100_000, validation_interval=10))

    async def drive() -> None:
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: app.last_val is not None and app.chart.plot_area is not None, "a val loss")
            await pilot.pause(0.6)  # a tick: the status line shows the latest numbers
            rows = screen_lines(app)
            assert len(rows) == size[1] and all(len(r) == size[0] for r in rows)
            # every field of the header and of the status line is on the screen whole, on one row
            fields = [f.plain for g in app.header.groups for f in g] + [f.plain for g in app.status.groups for f in g]
            assert len(fields) >= 12
            for field in fields:
                assert any(field in row for row in rows), f"{field!r} is split or missing at {size}"
            header, status = app.header.region, app.status.region
            assert header.bottom <= app.chart.region.y and app.chart.region.bottom <= status.y  # nothing overlaps
            assert "RUNNING" in "".join(rows[status.y:status.bottom])
            await pilot.press("s")  # a save notice is one row, whatever the length of its path (it took 3 of 24)
            await wait_for(pilot, lambda: app.last_saved is not None, "the save")
            await pilot.pause(0.1)
            assert app.notice.region.height == 1 and "saved step " in screen_lines(app)[app.notice.region.y]
            # the footer names every key whole (at 80 columns it had cut "q quit" to "q qui")
            keys = [f"{b.key} {b.description}" for b in app.BINDINGS if b.show]
            assert len(keys) == 7 and all(key in rows[-1] for key in keys), rows[-1]
            await pilot.press("g")
            screen = app.screen
            assert isinstance(screen, SampleScreen)
            await wait_for(pilot, lambda: screen.text is not None, "the sampled text")
            await pilot.pause(0.1)

            def frame_left(rows: list[str]) -> int:
                """The column of the y axis (the ticks' ┤) on the screen as drawn now; -1 when no tick shows."""
                chart = app.chart.content_region
                ticks = [r.index("┤") for r in rows[chart.y:chart.bottom] if "┤" in r]
                return min(ticks, default=-1)

            def placed() -> bool:
                # The chart may redraw (new tick labels, a narrower axis) after the popup opened: the popup follows,
                # so read the screen, the frame and the box together, as they are now, not as they were before `g`.
                chart = app.chart.content_region
                area = app.chart.plot_area.translate(chart.offset)
                box = screen.query_one("#sample-box").region
                return (
                    area.contains_region(box)
                    and box.x > frame_left(screen_lines(app))
                    and box.y > chart.y
                    and box.bottom < chart.bottom - 1
                )

            def covers_the_chart() -> bool:  # at 80x24 the frame has too few rows: the text takes the whole chart
                return screen.query_one("#sample-box").region == app.chart.content_region

            # the axis labels are the chart's columns left of its frame and its rows below the frame
            if size == (80, 24):
                await wait_for(pilot, covers_the_chart, "the popup over the chart", timeout=5.0)
            else:
                await wait_for(pilot, placed, "the popup inside the chart's frame, clear of the axis labels", timeout=5)
            box = screen.query_one("#sample-box").region
            assert box.width >= SampleScreen.MIN_SIZE[0] and box.height >= SampleScreen.MIN_SIZE[1]
            assert screen.query_one("#sample-scroll").region.height >= 8  # 8 rows of text, not ~4
            # a text longer than the box: the border says how to scroll, and the keys scroll it
            screen.show_text(app.step, "\n".join(f"line {i}" for i in range(60)))
            await pilot.pause(0.2)
            rows = screen_lines(app)
            assert "↑/↓ PgUp/PgDn: scroll · Esc: close" in rows[box.bottom - 1]
            assert any("line 0" in row for row in rows) and not any("line 59" in row for row in rows)
            scroll = screen.query_one("#sample-scroll")
            await pilot.press("pagedown")
            await pilot.pause(0.1)
            paged = scroll.scroll_y
            await pilot.press("down")
            await pilot.pause(0.1)
            assert paged >= 8 and scroll.scroll_y == paged + 1
            await pilot.press("escape")
            await pilot.press("q")
            await wait_for(pilot, lambda: app.result is not None, "the run to stop")

    asyncio.run(drive())


def test_a_notice_is_shortened_between_its_parts_and_a_path_from_its_start() -> None:
    from nanogpt.tui.notice import fit, shorten_path

    notes = "resumed at step 40 (40 logged steps); press p to continue · note: the preset's recipe applies"
    assert fit(notes, 80, 2) == [notes[:80].rsplit(" ", 1)[0], notes[len(notes[:80].rsplit(" ", 1)[0]) + 1 :]]
    assert fit(notes, 40, 1) == ["resumed at step 40 (40 logged steps) …"]
    assert fit("one", 40, 1) == ["one"]
    line = shorten_path("saved step 5: ", "/a/very/long/folder/model_step_5", " (the best so far)", 50)
    assert line == "saved step 5: …lder/model_step_5 (the best so far)" and len(line) == 50


def test_p_after_the_run_finished_says_so(char_data: Path, tmp_path: Path) -> None:
    app = TrainingApp(make_trainer(char_data, tmp_path, steps=1))

    async def drive() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.finished is not None, "the one step")
            assert "finished 1 step;" in str(app.notice.render())  # not "1 steps"
            await pilot.pause(0.1)
            # one row at 80 columns, however long the path: what to do next stays on screen
            assert app.notice.region.height == 1 and "Press q to leave." in screen_lines(app)[app.notice.region.y]
            await pilot.press("p")
            assert "the run has finished" in str(app.notice.render())
            assert app.badge() == "DONE"
            # a notice longer than its 2 rows (at 80x24) loses whole sentences from its end, never half of one
            sentences = [f"Sentence number {i} says a little more about the run." for i in range(8)]
            app._notice(" ".join(sentences))
            await pilot.pause(0.1)
            shown = screen_lines(app)[app.notice.region.y : app.notice.region.bottom]
            assert len(shown) == 2
            text = " ".join(row.strip() for row in shown)
            assert text.endswith(". …") and text.removesuffix(" …") == " ".join(sentences[: text.count(".")])
            assert app.notice.text == " ".join(sentences)  # kept whole, and printed whole when the UI exits
            assert list(app.notice.shortened) == [" ".join(sentences)]
            await pilot.press("q")

    asyncio.run(drive())


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_the_legend_names_each_mixology_source(mixology_dir: Path, tmp_path: Path, size: tuple[int, int]) -> None:
    earlier = make_trainer(mixology_dir, tmp_path / "earlier", steps=4, validation_interval=2, eval_sample_tokens=0)
    earlier.run(lambda event: None)
    run = read_run(tmp_path / "earlier")
    app = TrainingApp(make_trainer(mixology_dir, tmp_path / "live", steps=4, validation_interval=2),
                      compare=(run.name, run.log))

    async def drive() -> None:
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: app.finished is not None, "the run to finish")
            assert sorted(app.chart.source_val) == ["alice", "shakespeare"]
            assert app.chart.source_val["alice"][0] == [2, 4]
            assert f"grad {app.recent[-1].grad_norm:.3g}" in app.status_text()  # the gradient norm, read with the loss

            def legend() -> bool:
                chart = app.chart.content_region
                drawn = "\n".join(screen_lines(app)[chart.y : chart.bottom])
                return "val alice" in drawn and "val shakespeare" in drawn

            await wait_for(pilot, legend, "a legend naming both sources", timeout=10.0)
            # six series (train, validation, two sources, the earlier run's two): the legend sits under the plot,
            # on at most a third of the chart's rows (plotext's own took 6 of ~10 at 80x24), and each series has
            # its own glyph, so that they are told apart without colour
            chart = app.chart.content_region
            drawn = screen_lines(app)[chart.y : chart.bottom]
            frame_bottom = max(i for i, row in enumerate(drawn) if "└" in row)
            labels = ["earlier train", "earlier val", "train", "validation", "val alice", "val shakespeare"]
            legend_rows = [i for i, row in enumerate(drawn) if any(label in row for label in labels)]
            assert min(legend_rows) > frame_bottom and len(legend_rows) <= chart.height // 3, drawn
            entries = [e.strip().split(" ", 1) for i in legend_rows for e in drawn[i].split("   ") if e.strip()]
            glyphs = {label: glyph for glyph, label in entries}
            assert sorted(glyphs) == sorted(labels) and len(set(glyphs.values())) == len(labels), glyphs
            plot = "".join(drawn[:frame_bottom])
            assert all(glyphs[label][0] in plot for label in ("validation", "val alice", "val shakespeare")), drawn
            await pilot.press("q")

    asyncio.run(drive())


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_v_pages_through_the_samples_by_step(char_data: Path, tmp_path: Path, size: tuple[int, int]) -> None:
    app = TrainingApp(make_trainer(char_data, tmp_path, steps=6, validation_interval=2, eval_sample_tokens=20))

    async def drive() -> None:
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: app.finished is not None, "the run to finish")
            assert "v past samples" in "".join(screen_lines(app)[-1:])  # the key is in the footer
            assert [step for step, _ in app.samples] == [2, 4, 6]
            await pilot.press("v")
            pager = app.screen
            assert isinstance(pager, SamplePager)

            def shown() -> tuple[int, str]:
                title = str(pager.query_one("#sample-title", Static).render())
                return int(title.split()[3]), str(pager.query_one("#sample-text", Static).render())

            assert shown() == (6, app.samples[2][1])
            for key, step in (("left", 4), ("left", 2), ("left", 2), ("right", 4)):
                await pilot.press(key)
                assert shown() == (step, dict(app.samples)[step])
            await pilot.press("escape")
            assert not isinstance(app.screen, SamplePager)
            await pilot.press("q")

    asyncio.run(drive())


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_compare_draws_an_earlier_run_beside_the_live_one(char_data: Path, tmp_path: Path, size) -> None:
    earlier = make_trainer(char_data, tmp_path / "earlier", steps=8, validation_interval=4, eval_sample_tokens=0)
    earlier.run(lambda event: None)
    run = read_run(tmp_path / "earlier")
    app = TrainingApp(make_trainer(char_data, tmp_path / "live", steps=100_000, validation_interval=10),
                      compare=(run.name, run.log))

    async def drive() -> None:
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: app.chart.draws > 0 and app.step > 0, "a drawn chart")
            name, steps, losses, val_steps, _ = app.chart.compare
            assert (name, steps, val_steps) == ("earlier", list(range(1, 9)), [4, 8])
            assert losses == [e["loss"] for e in run.log]

            def legend() -> bool:
                chart = app.chart.content_region
                drawn = "\n".join(screen_lines(app)[chart.y : chart.bottom])
                return "earlier train" in drawn and "earlier val" in drawn and "train" in drawn

            await wait_for(pilot, legend, "the earlier run in the legend", timeout=10.0)
            await pilot.press("q")
            await wait_for(pilot, lambda: app.result is not None, "the run to stop")

    asyncio.run(drive())


def test_compare_with_a_path_that_is_not_a_run_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["train", "--compare", str(tmp_path / "nope"), "--headless", "--steps", "1"]) == 1
    assert capsys.readouterr().err == (
        f"nanogpt train: error: {tmp_path / 'nope'} is not a run: give a checkpoint stem (e.g. out/model_step_500), "
        "one of its files, or a folder of checkpoints\n"
    )


def test_a_run_that_overfits_says_so_in_the_notice(overfit_dir: Path, tmp_path: Path) -> None:
    from engine_fixtures import OVERFIT

    app = TrainingApp(build_trainer({**OVERFIT, "steps": 100_000, "data_dir": str(overfit_dir),
                                     "out_dir": str(tmp_path)}))

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: "overfitting:" in str(app.notice.render()), "the notice", timeout=120)
            notice = app.notice.text  # whole (on screen it wraps, or loses its last parts on a small one)
            assert "rose at each of the last 3 evaluations" in notice and "best kept: " in notice
            assert "--stop-when-overfitting stops a run here" in notice
            await pilot.press("q")
            await wait_for(pilot, lambda: app.result is not None, "the run to stop")

    asyncio.run(drive())
