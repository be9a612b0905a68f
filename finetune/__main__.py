"""`python -m finetune <command> ...`: see `python -m finetune --help`."""

from finetune.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
