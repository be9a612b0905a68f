"""The blind arena of one owner: battles between the base and the owner's runs, votes and standings
(:mod:`finetune.arena` keeps them in the owner's folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checks import Owner, ServiceError, check_model_ref


def _contender(space: Owner, name: str) -> str | None:
    """The adapter folder a contender names (None: the base model)."""
    from ..arena import BASE

    return None if name == BASE else str(space.adapter_path(name))


def battle(space: Owner, contenders: list[str], prompt: str, *, base_model: str = "",
           temperature: float = 0.0, max_new_tokens: int = 256, top_p: float = 0.9,
           repetition_penalty: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Two to four of ``base`` and the owner's runs / checkpoints (``ID``, ``ID@step``) answer ``prompt`` with the
    same seed and settings, each adapter with its own trained template (the base with the first adapter's);
    returns ``{"battle_id", "answers": {"A": ..., ...}}`` in a hidden shuffled order."""
    from .. import arena, inference

    names = [c.strip() for c in contenders if c and c.strip()]
    folders = {n: _contender(space, n) for n in dict.fromkeys(names)}
    adapters = [f for f in folders.values() if f]
    if not adapters and len(names) >= arena.MIN_CONTENDERS:
        raise ServiceError("pick at least one of your runs or checkpoints besides the base model")
    base_model = check_model_ref(space.ws, base_model)
    base = base_model or (inference.adapter_base(adapters[0]) if adapters else "")
    template, system = inference.trained_defaults(adapters[0]) if adapters else ("", "")
    settings = {"temperature": temperature, "max_new_tokens": max_new_tokens, "top_p": top_p,
                "repetition_penalty": repetition_penalty, "seed": seed, "base_model": base}

    def answer(name: str) -> str:
        folder = folders[name]
        kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  repetition_penalty=repetition_penalty, seed=seed)
        if folder is None:
            return inference.generate_batch([prompt], model=base, template=template, system_prompt=system, **kw)[0]
        return inference.generate_batch([prompt], adapter=folder, model=base_model or None, **kw)[0]

    return arena.start_battle(space.root, names, prompt, answer, settings)


def vote(space: Owner, battle_id: str, verdict: str) -> dict[str, Any]:
    """Record a vote (a letter, ``tie`` or ``both_bad``) on one of the owner's open battles: ``{"vote": the
    record with the contenders revealed, "votes": the owner's vote count, "standings": their updated
    standings}``."""
    from .. import arena

    root = space.root
    record = arena.vote(root, battle_id, verdict)
    votes = arena.read_votes(root)
    return {"vote": record, "votes": len(votes), "standings": arena.standings(votes)}


def votes(space: Owner) -> int:
    """How many votes the owner has cast."""
    from .. import arena

    return len(arena.read_votes(space.root))


def standings(space: Owner) -> list[dict[str, Any]]:
    """The owner's arena standings: rating with a 95% interval, wins, losses, ties, win rate, best first."""
    from .. import arena

    return arena.standings(arena.read_votes(space.root))


def export(space: Owner, out_dir: Path) -> Path:
    """A copy of the owner's votes (JSON lines) to download."""
    from .. import arena

    src = arena.votes_file(space.root)
    if not src.exists():
        raise ServiceError("no votes yet: start a battle and vote first")
    space.check_download_room(src, "exporting the votes")
    out_dir.mkdir(parents=True, exist_ok=True)
    import secrets

    target = out_dir / f"arena-votes-{secrets.token_hex(8)}.jsonl"  # unguessable: the downloads folder is shared
    target.write_bytes(src.read_bytes())
    return target
