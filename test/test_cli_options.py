"""`dicnet COMMAND -h` for every command: the options several commands share (--model, --backend, --device,
--threshold, --max-pixels) come from dicnet_ros.cli_options and mean the same thing everywhere: same help text,
same choices, same parsing, the same default (or None where a command passes only what the user gave)."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from dicnet_ros import cli_options
from dicnet_ros.cli import SUBCOMMANDS, subcommand_parser

#: Commands whose parsers belong to other parts of the project and have not taken the shared options yet; each is
#: a strict xfail, so the entry must go once the command adopts dicnet_ros.cli_options.
PENDING: dict[str, str] = {}
#: Commands that run a trained model and so must take --model (default: the shipped model).
RUN_A_MODEL = ("infer", "bag-eval", "demo", "node", "build-engine")


def _reference() -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser()
    cli_options.add_inference_arguments(parser)
    cli_options.add_threshold_argument(parser)
    cli_options.add_max_pixels_argument(parser)
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.option_strings[0] != "-h"}


def _parser(name: str) -> argparse.ArgumentParser:
    try:
        return subcommand_parser(name)
    except SystemExit as exc:  # a missing extra, named by the message (CI installs every extra)
        pytest.skip(f"missing module for dicnet {name}: {exc}")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=PENDING[n]))
                                  if n in PENDING else n for n in SUBCOMMANDS])
def test_shared_options_mean_the_same_in_every_command(name: str) -> None:
    parser = _parser(name)
    actions = {option: a for a in parser._actions for option in a.option_strings}
    for option, reference in _reference().items():
        action = actions.get(option)
        if action is None:
            continue
        assert action.help.startswith(reference.help), (name, option, action.help)
        assert action.choices == reference.choices and action.type is reference.type, (name, option)
        assert action.default in (reference.default, None), (name, option, action.default)
        assert action.default is None or option != "--model", (name, "--model defaults to the shipped model")
    if name in RUN_A_MODEL:
        assert "--model" in actions and not actions["--model"].required, name


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_command_prints_its_help(name: str) -> None:
    parser = _parser(name)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["-h"])
    assert exit_info.value.code == 0 and f"usage: dicnet {name}" in out.getvalue()


def test_shared_types_refuse_nonsense() -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    cli_options.add_inference_arguments(parser)
    cli_options.add_threshold_argument(parser)
    cli_options.add_max_pixels_argument(parser)
    args = parser.parse_args(["--device", "cuda:1", "--threshold", "nan", "--max-pixels", "0"])
    assert (args.device, args.threshold, args.max_pixels, args.model, args.backend) == ("cuda:1", None, 0, None, "auto")
    for argv in (["--device", "gpu"], ["--device", "cuda:x"], ["--backend", "openvino"], ["--threshold", "inf"],
                 ["--max-pixels", "-5"]):
        with pytest.raises(argparse.ArgumentError):
            parser.parse_args(argv)
