"""What a user string names: a Hub repo, a local file or folder, or the embedded default model.

Every place that takes a model, adapter or dataset name from a person asks :func:`classify`, so "Hub id or
path?" is decided here once. Two rules for the shape of a Hub id, picked by the caller:

- ``strict=True`` (default): the Hub's own naming rule as ``huggingface_hub.utils.validate_repo_id`` checks
  it (letters, digits, ``_ . -``; no part starts or ends with ``.`` or ``-``; no ``..``). For decisions taken without asking the
  Hub: card metadata, what a user of a shared server may name, whether a data source is a Hub dataset.
- ``strict=False``: anything that does not read as a path (no leading ``/ . ~``, at most one ``/``). For
  names handed to the Hub anyway, so a malformed id gets the Hub's own explanation.

>>> classify("HuggingFaceTB/SmolLM2-135M-Instruct").kind
'hub'
>>> classify("./my-model").kind
'path'
>>> classify("").kind
'embedded'
>>> classify("alice/lora@v1", strict=False, revision=True).revision
'v1'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

RefKind = Literal["embedded", "hub", "path"]

# Text starting like this is a path on every platform we run on, never a Hub id.
PATH_STARTS = ("/", ".", "~")
# ``name`` or ``org/name``: letters, digits, ``_ . -``; each part ends (and the name part starts) with a word
# character, as the Hub requires (``org/.x`` and ``org/x.`` are refused there); ``..`` is refused separately.
_HUB_ID = re.compile(r"[A-Za-z0-9](?:[\w.-]*\w)?(?:/\w(?:[\w.-]*\w)?)?")


@dataclass(frozen=True)
class Ref:
    """A classified user string. ``repo_id``/``revision`` are set for ``hub`` only."""

    kind: RefKind
    text: str  # the string as given
    repo_id: str = ""  # hub: the repo id, without ``@revision``
    revision: str | None = None  # hub: the part after ``@`` when the caller allows revisions

    @property
    def path(self) -> Path:
        """The text as a local path (``~`` expanded)."""
        return Path(self.text).expanduser()

    @property
    def has_namespace(self) -> bool:
        """A Hub id of the form ``org/name`` (not a bare ``name``)."""
        return "/" in self.repo_id


def starts_like_path(text: str) -> bool:
    """Text that begins as a path does (``/``, ``.``, ``~``): never a Hub id under either rule."""
    return text.startswith(PATH_STARTS)


def _hub_shaped(text: str, strict: bool) -> bool:
    if strict:
        return bool(_HUB_ID.fullmatch(text)) and ".." not in text
    return not starts_like_path(text) and text.count("/") <= 1


def classify(text: str, *, strict: bool = True, local_first: bool = True, file_suffixes: tuple[str, ...] = (),
             revision: bool = False) -> Ref:
    """Say whether ``text`` names the embedded default model (empty), a Hub repo, or a local path.

    ``local_first``: a Hub-shaped name that exists on this machine (``org/name`` as a folder) is the local
    path; off where the caller has already looked locally or names a Hub repo only (a push target).
    ``file_suffixes``: names ending so are files, not Hub ids (``data.jsonl`` is a missing file, not a repo).
    ``revision``: ``org/name@rev`` names revision ``rev`` of ``org/name``.
    Anything that is not a Hub id is a path, possibly one that does not exist.

    >>> classify("alice/data.jsonl", file_suffixes=(".jsonl",)).kind
    'path'
    >>> classify("gpt2").has_namespace
    False
    """
    if not text:
        return Ref("embedded", text)
    repo_id, rev = text, None
    if revision:
        repo_id, _, at = text.partition("@")
        rev = at or None
    if not _hub_shaped(repo_id, strict) or (file_suffixes and repo_id.endswith(file_suffixes)):
        return Ref("path", text)
    # Hub-shaped text never starts with "~", so no home expansion is needed (or attempted: "~nobody/x"
    # would raise) to look for it locally.
    if local_first and Path(text).exists():
        return Ref("path", text)
    return Ref("hub", text, repo_id, rev)


def is_hub_id(text: str) -> bool:
    """``org/name`` by the Hub's rule and not a local path: a name that Hub metadata may link to.

    >>> is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"), is_hub_id("gpt2"), is_hub_id("/models/x")
    (True, False, False)
    """
    ref = classify(text)
    return ref.kind == "hub" and ref.has_namespace
