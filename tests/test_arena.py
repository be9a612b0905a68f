"""The arena's statistics against a known ranking (synthetic votes), and its battles and votes on disk."""

from __future__ import annotations

import json
import math
import random

import pytest

from finetune import arena

TRUE = {"best": 4.0, "good": 2.0, "base": 1.0, "bad": 0.5}  # Bradley-Terry strengths


def synthetic_votes(n: int, seed: int = 1, ties: float = 0.1) -> list[dict]:
    """Votes on random pairs (and some triples) drawn from the true strengths."""
    rng = random.Random(seed)
    names = list(TRUE)
    votes = []
    for _ in range(n):
        shown = rng.sample(names, rng.choice([2, 2, 3]))
        if rng.random() < ties:
            verdict = rng.choice(["tie", "both_bad"])
        else:  # Luce's choice: each shown answer wins with probability proportional to its strength
            r, acc = rng.random() * sum(TRUE[s] for s in shown), 0.0
            for k, s in enumerate(shown):
                acc += TRUE[s]
                if r <= acc:
                    verdict = "ABCD"[k]
                    break
        votes.append({"contenders": shown, "verdict": verdict})
    return votes


def test_bradley_terry_recovers_a_known_ranking_with_intervals_that_cover_it():
    # no ties here: a tie, drawn regardless of strength, is evidence of equality and pulls the ratings together
    table = arena.standings(synthetic_votes(1500, ties=0.0), samples=100, seed=3)
    assert [r["name"] for r in table] == ["best", "good", "base", "bad"]
    by = {r["name"]: r for r in table}
    # the fitted Elo gaps match the true ones (400·log10 of the strength ratio: 120 points per doubling)
    for a, b in (("best", "good"), ("good", "base"), ("base", "bad"), ("best", "bad")):
        true_gap = 400 * math.log10(TRUE[a] / TRUE[b])
        assert by[a]["rating"] - by[b]["rating"] == pytest.approx(true_gap, abs=35), (a, b)
    # each 95% interval holds its estimate, and the true gap to the mean is inside it for all four
    mean = sum(math.log10(v) for v in TRUE.values()) / len(TRUE)
    for name, r in by.items():
        assert r["ci_low"] < r["rating"] < r["ci_high"]
        assert r["ci_low"] - 10 <= 1000 + 400 * (math.log10(TRUE[name]) - mean) <= r["ci_high"] + 10, name
    assert by["best"]["win_rate"] > by["good"]["win_rate"] > by["base"]["win_rate"] > by["bad"]["win_rate"]


def test_few_votes_give_wide_intervals_and_many_narrow_ones():
    few = {r["name"]: r for r in arena.standings(synthetic_votes(20, seed=5), samples=100)}
    many = {r["name"]: r for r in arena.standings(synthetic_votes(1500, seed=5), samples=100)}
    for name in TRUE:
        assert few[name]["ci_high"] - few[name]["ci_low"] > 2 * (many[name]["ci_high"] - many[name]["ci_low"])


def test_unbeaten_contender_stays_finite_and_counts_are_exact():
    votes = [{"contenders": ["a", "b"], "verdict": "A"}] * 5 + [{"contenders": ["a", "b", "c"], "verdict": "C"},
                                                               {"contenders": ["b", "c"], "verdict": "tie"}]
    by = {r["name"]: r for r in arena.standings(votes, samples=20)}
    assert math.isfinite(by["a"]["rating"]) and by["a"]["rating"] > by["b"]["rating"]
    # the triple: c beat a and b; a-b no evidence. b-c tie.
    assert (by["a"]["wins"], by["a"]["losses"], by["a"]["ties"]) == (5, 1, 0)
    assert (by["b"]["wins"], by["b"]["losses"], by["b"]["ties"]) == (0, 6, 1)
    assert (by["c"]["wins"], by["c"]["losses"], by["c"]["ties"], by["c"]["votes"]) == (2, 0, 1, 2)
    assert by["c"]["win_rate"] == pytest.approx(2.5 / 3, abs=1e-4)


def test_battle_hides_the_order_until_the_vote_and_votes_are_per_owner(tmp_path):
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    asked = []

    def answer(name):
        asked.append(name)
        return f"answer of {name}"

    b = arena.start_battle(alice, ["base", "run1", "run1@20"], "Hi?", answer, {"seed": 0}, rng=random.Random(4))
    assert sorted(asked) == ["base", "run1", "run1@20"]
    assert set(b["answers"]) == {"A", "B", "C"} and "run1" not in json.dumps(list(b["answers"]))
    with pytest.raises(arena.ArenaError, match="not open"):
        arena.vote(bob, b["battle_id"], "A")  # another owner's folder has no such battle
    with pytest.raises(arena.ArenaError, match="one of A, B, C, tie, both_bad"):
        arena.vote(alice, b["battle_id"], "D")
    record = arena.vote(alice, b["battle_id"], "b")
    assert record["answers"]["B"] == f"answer of {record['contenders'][1]}"
    with pytest.raises(arena.ArenaError, match="already voted"):
        arena.vote(alice, b["battle_id"], "A")  # one vote per battle
    assert len(arena.read_votes(alice)) == 1 and arena.read_votes(bob) == []
    with pytest.raises(arena.ArenaError, match="2 to 4"):
        arena.start_battle(alice, ["base"], "Hi?", answer, {})
    with pytest.raises(arena.ArenaError, match="once"):
        arena.start_battle(alice, ["base", "base"], "Hi?", answer, {})
