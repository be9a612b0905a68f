"""The blind A/B arena: two to four contenders (the base model, adapters, checkpoints) answer the same prompt with
the same seed and settings; the answers are shown shuffled as A, B, ...; a vote says which is better, a tie, or
that all are bad. Votes are kept per owner (``<owner's runs folder>/arena/votes.jsonl``: private to them on a
shared Space) and ranked with a Bradley-Terry model, with bootstrap confidence intervals.

Each vote becomes pairwise outcomes between the answers it saw: the winner beats every other one; a tie or
"all bad" is half a win for each side of every pair. Strengths are fitted by Hunter's MM algorithm and shown
on the Elo scale (1000 + 400·log10 of the strength relative to the geometric mean).

>>> votes = [{"contenders": ["base", "run1"], "verdict": "B"}] * 3 + [{"contenders": ["base", "run1"], "verdict": "tie"}]
>>> [(s["name"], s["wins"], s["ties"], s["games"]) for s in standings(votes, samples=0)]
[('run1', 3, 1, 4), ('base', 0, 1, 4)]
"""

from __future__ import annotations

import json
import math
import random
import secrets
import string
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import UserError
from .io import append_jsonl, atomic_write_json, read_jsonl

ARENA_DIR = "arena"
VOTES_FILE = "votes.jsonl"
BATTLES_DIR = "battles"  # battles shown and not yet voted on: the hidden order of their answers
BASE = "base"  # the contender that is the base model (adapter disabled)
VERDICTS = ("tie", "both_bad")  # besides a letter naming the better answer
MIN_CONTENDERS, MAX_CONTENDERS = 2, 4
ELO_SCALE, ELO_CENTER = 400.0, 1000.0


class ArenaError(ValueError, UserError):
    """A battle or vote that cannot be taken as given; the message says the fix."""


def _folder(root: Path) -> Path:
    return Path(root) / ARENA_DIR


# ---------------------------------------------------------------------------------------------
# battles and votes


def start_battle(root: Path, contenders: Sequence[str], prompt: str, answer: Callable[[str], str],
                 settings: dict[str, Any], rng: random.Random | None = None) -> dict[str, Any]:
    """Ask each contender (``answer(name)`` generates its answer, with the same seed and settings for all), shuffle
    the answers and keep the hidden order under ``<root>/arena/battles/``. Returns ``{"battle_id", "answers":
    {"A": ..., "B": ...}}``: the contenders' names are revealed by :func:`vote` only."""
    names = [c.strip() for c in contenders if c and c.strip()]
    if not MIN_CONTENDERS <= len(names) <= MAX_CONTENDERS:
        raise ArenaError(f"pick {MIN_CONTENDERS} to {MAX_CONTENDERS} contenders (the base model, your runs or their "
                         f"checkpoints ID@step), got {len(names)}")
    if len(set(names)) != len(names):
        raise ArenaError("each contender may appear once; pick different runs or checkpoints")
    if not prompt.strip():
        raise ArenaError("type a prompt for the contenders to answer")
    order = list(names)
    (rng or random.SystemRandom()).shuffle(order)
    letters = string.ascii_uppercase[:len(order)]
    answers = {letter: answer(name) for letter, name in zip(letters, order)}
    battle_id = secrets.token_hex(8)
    atomic_write_json(_folder(root) / BATTLES_DIR / f"{battle_id}.json",
                      {"battle_id": battle_id, "time": time.time(), "prompt": prompt, "settings": settings,
                       "contenders": order, "answers": answers})
    return {"battle_id": battle_id, "answers": answers}


def vote(root: Path, battle_id: str, verdict: str) -> dict[str, Any]:
    """Record the owner's verdict on a battle: a letter (that answer is the better one), ``tie`` or ``both_bad``.
    Returns the vote with the contenders revealed (``contenders`` in the order A, B, ...)."""
    if not (isinstance(battle_id, str) and len(battle_id) == 16 and all(c in string.hexdigits for c in battle_id)):
        raise ArenaError("no such battle; start one (Battle) and vote on its answers")
    path = _folder(root) / BATTLES_DIR / f"{battle_id}.json"
    try:
        battle = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if any(v.get("battle_id") == battle_id for v in read_votes(root)):
            raise ArenaError("you already voted on this battle (one vote per battle); start a new one for another "
                             "vote") from None
        raise ArenaError("this battle is not open (not one of yours); start a new one") from None
    letters = list(string.ascii_uppercase[:len(battle["contenders"])])
    verdict = (verdict or "").strip()
    verdict = verdict.upper() if len(verdict) == 1 else verdict.lower().replace(" ", "_")
    if verdict not in letters and verdict not in VERDICTS:
        raise ArenaError(f"a vote is one of {', '.join(letters + list(VERDICTS))}, got '{verdict}'")
    record = {**battle, "verdict": verdict, "voted": time.time()}
    append_jsonl(_folder(root) / VOTES_FILE, record)
    path.unlink(missing_ok=True)
    return record


def read_votes(root: Path) -> list[dict[str, Any]]:
    """The owner's votes, oldest first (a torn last line is skipped)."""
    return [v for v in read_jsonl(_folder(root) / VOTES_FILE) if isinstance(v, dict) and "verdict" in v]


def votes_file(root: Path) -> Path:
    """The owner's votes as JSON lines (what the export downloads)."""
    return _folder(root) / VOTES_FILE


# ---------------------------------------------------------------------------------------------
# statistics


Outcome = tuple[str, str, float]  # (i, j, score of i against j: 1 win, 0.5 tie, 0 loss)


def outcomes(v: dict[str, Any]) -> list[Outcome]:
    """The pairwise outcomes of one vote."""
    names = list(v["contenders"])
    letters = string.ascii_uppercase[:len(names)]
    verdict = v["verdict"]
    out: list[Outcome] = []
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            if verdict in VERDICTS:
                score = 0.5
            elif verdict == letters[a]:
                score = 1.0
            elif verdict == letters[b]:
                score = 0.0
            else:
                continue  # a third answer won: no evidence between these two
            out.append((names[a], names[b], score))
    return out


def bradley_terry(pairs: Sequence[Outcome], names: Sequence[str], iterations: int = 200) -> dict[str, float]:
    """Bradley-Terry strengths (geometric mean 1) by Hunter's MM updates; a small prior (one tie of every
    contender against a virtual average one) keeps them finite when one never loses or never wins."""
    wins = {n: 0.5 for n in names}  # the prior's half win
    games: dict[tuple[str, str], float] = {}
    for i, j, s in pairs:
        wins[i] += s
        wins[j] += 1 - s
        key = (i, j) if i < j else (j, i)
        games[key] = games.get(key, 0.0) + 1
    p = {n: 1.0 for n in names}
    for _ in range(iterations):
        new = {}
        for n in names:
            denom = 1.0 / (p[n] + 1.0)  # the prior's game against strength 1
            for (i, j), count in games.items():
                if n in (i, j):
                    denom += count / (p[i] + p[j])
            new[n] = wins[n] / denom
        mean = math.exp(sum(math.log(v) for v in new.values()) / len(new))
        p = {n: v / mean for n, v in new.items()}
    return p


def elo(strength: float) -> float:
    return ELO_CENTER + ELO_SCALE * math.log10(strength)


# Votes a contender needs for its interval: the bootstrap resamples the votes, and one vote resampled is always
# that vote (a zero-width interval that reads as certainty); with two, three mixes of the same two.
MIN_INTERVAL_VOTES = 3


def standings(votes: Sequence[dict[str, Any]], samples: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    """Per contender: Elo-scale rating with a 95% bootstrap interval (votes resampled ``samples`` times; ``ci_low``
    and ``ci_high`` None while it was in fewer than ``MIN_INTERVAL_VOTES`` votes), wins, losses and ties over its
    pairwise games, win rate (a tie counts half), and how many votes it was in; best first."""
    names = sorted({n for v in votes for n in v["contenders"]})
    if not names:
        return []
    pairs = [o for v in votes for o in outcomes(v)]
    fit = bradley_terry(pairs, names)
    rng = random.Random(seed)
    boot: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(samples):
        sample = [votes[rng.randrange(len(votes))] for _ in votes]
        s = bradley_terry([o for v in sample for o in outcomes(v)], names, iterations=60)
        for n in names:
            boot[n].append(elo(s[n]))
    rows = []
    for n in names:
        mine = [(s if i == n else 1 - s) for i, j, s in pairs if n in (i, j)]
        ws, ls = sum(1 for s in mine if s == 1), sum(1 for s in mine if s == 0)
        ts = len(mine) - ws - ls
        in_votes = sum(1 for v in votes if n in v["contenders"])
        b = sorted(boot[n]) if in_votes >= MIN_INTERVAL_VOTES else []  # too few: no interval, not a false one
        rows.append({"name": n, "rating": round(elo(fit[n]), 1),
                     "ci_low": round(b[int(0.025 * (len(b) - 1))], 1) if b else None,
                     "ci_high": round(b[int(math.ceil(0.975 * (len(b) - 1)))], 1) if b else None,
                     "wins": ws, "losses": ls, "ties": ts, "games": len(mine),
                     "win_rate": round((ws + 0.5 * ts) / len(mine), 4) if mine else None,
                     "votes": in_votes})
    return sorted(rows, key=lambda r: -r["rating"])
