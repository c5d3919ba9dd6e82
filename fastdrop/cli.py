"""The ``fastdrop`` console command: ``fastdrop bench|train|validate [options]``.

Each subcommand lives in its own module with a ``main(argv) -> int``; this file only dispatches,
so that ``fastdrop --help`` stays fast and imports none of them.
"""

from __future__ import annotations

import importlib
import sys

_COMMANDS = {
    "bench": ("fastdrop.bench", "throughput table of the fused kernels against NumPy and PyTorch"),
    "train": ("fastdrop.train", "the article's MLP on MNIST, with and without dropout"),
    "validate": ("fastdrop.validate", "check fastdrop against PyTorch's dropout on this machine"),
}


def _usage() -> str:
    lines = ["usage: fastdrop COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in _COMMANDS.items()]
    lines += ["", "Run 'fastdrop COMMAND --help' for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in _COMMANDS:
        print(f"fastdrop: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(_COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
