"""`python -m finetune verify-template PATH [--revision REV]`

Check that an adapter's saved chat template (its tokenizer files, read by every other tool) renders exactly
what training rendered: the run's own validation dialogs (else a sample of its training data, when readable)
and built-in probes, compared as text and as token ids. PATH is a run folder, an adapter folder or a Hub repo
id. Exit status 0 when they agree; 1 with the first differing character and token printed.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("verify-template", help="check that an adapter's chat template renders what training did",
                       description=__doc__)
    p.add_argument("path", metavar="PATH", help="run folder, adapter folder or Hub repo id (org/name[@revision])")
    p.add_argument("--revision", help="Hub revision (branch, tag or commit) of a repo id")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from finetune.verify import check_template

    result = check_template(args.path, revision=args.revision)
    if not result.ok:
        print(result.message(), file=sys.stderr)
        return 1
    print(result.message())
    return 0
