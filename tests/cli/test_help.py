"""Every option of every command explains itself and shows its default; plot titles are cut at name boundaries."""

from __future__ import annotations

import argparse

import pytest

from fourierft.cli import build_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001 (test only)
    return dict(sub.choices)


@pytest.mark.parametrize("name", ["train", "merge", "info", "eval"])
def test_every_option_has_help_and_shows_its_default(name: str) -> None:
    command = _commands()[name]
    text = command.format_help()
    for action in command._actions:  # noqa: SLF001
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[0]
        assert action.help and len(action.help) > 8, f"{name} {flag} has no help text"
        shown = command._get_formatter()._get_help_string(action)  # noqa: SLF001 (what --help prints)
        assert "default" in shown.lower() or action.required, f"{name} {flag}: no default shown ({shown!r})"
    assert "(default: 32)" in _commands()["train"].format_help()  # --batch-size, from the formatter
    assert text.startswith("usage: fourierft " + name)


def test_plot_titles_are_cut_at_a_dot() -> None:
    from fourierft.cli.plots import short_name

    name = "base_model.model.bert.encoder.layer.10.attention.self.query"
    cut = short_name(name, 36)
    assert len(cut) <= 36 and cut.startswith("...") and name.endswith(cut[3:])
    assert cut[3:] == "layer.10.attention.self.query" or cut[3:].split(".")[0] in name.split(".")
    assert name[-len(cut) + 3 - 1] == "."  # the kept part starts right after a dot: no word is cut
    assert short_name("encoder.layer.0.query", 36) == "encoder.layer.0.query"


def test_progress_bar_on_a_terminal_shows_elapsed_and_remaining(capsys) -> None:
    """On a terminal: a tqdm bar (elapsed<remaining) on stderr, evaluation lines written above it."""
    from types import SimpleNamespace

    from fourierft.cli.trainer import Progress

    progress = Progress(main=True, tty=True)
    state = SimpleNamespace(global_step=0, max_steps=10, epoch=0.0)
    progress.on_train_begin(None, state, None)
    state.global_step, state.epoch = 4, 0.4
    progress.on_step_end(None, state, None)
    progress.on_log(None, state, None, logs={"loss": 0.5})
    progress.bar.refresh()
    progress.on_evaluate(None, state, None, metrics={"eval_loss": 0.25, "eval_accuracy": 0.75})
    shown = capsys.readouterr().err  # the bar draws on stderr, as on a terminal
    assert "4/10" in shown and "<" in shown and ("step/s" in shown or "s/step" in shown)  # elapsed<remaining, rate
    assert "step 4/10, epoch 0.40, train loss 0.5000, validation loss 0.2500, accuracy 75.0%" in shown
    progress.on_train_end(None, state, None)
    assert progress.bar is None
