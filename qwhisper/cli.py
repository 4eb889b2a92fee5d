"""`qwhisper` command line: one sub-command per tool, each module owning its own arguments.

Every sub-command module exposes `add_arguments(parser)` and `run(args) -> int`; they are
imported only when chosen, so `qwhisper inspect` does not pay for torch. Errors that come
from bad input (QWhisperError) print one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import QWhisperError

# sub-command -> (module, one-line help)
COMMANDS = {
    "transcribe": ("qwhisper.transcribe", "transcribe audio files"),
    "detect-language": ("qwhisper.detect_language", "print the most likely spoken languages of audio files"),
    "quantize": ("qwhisper.quantize", "quantize a GGML model (whisper-quantize's arguments: IN OUT TYPE)"),
    "convert": ("qwhisper.convert", "convert CTranslate2 / OpenAI .pt / HF Whisper weights to GGML"),
    "inspect": ("qwhisper.inspect", "print a GGML model's header and tensor table"),
    "download": ("qwhisper.models_cli", "fetch or convert a model by name into the cache; print its path"),
    "verify": ("qwhisper.verify", "check the GPU (or CPU torch) path against the numpy golden, layer by layer"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the chosen sub-command's module (only that one) adds its own arguments."""
    parser = argparse.ArgumentParser(prog="qwhisper", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"qwhisper {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the sub-command is the first word that names one (options before it take no values)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return module.run(args)
    except QWhisperError as e:
        print(f"qwhisper {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qwhisper: interrupted", file=sys.stderr)
        return 130
