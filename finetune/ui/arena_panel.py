"""The Playground's blind A/B arena: two to four of the base model, your runs and their checkpoints answer one
prompt with the same settings; the answers come shuffled as A, B, ...; your vote reveals who was who and updates
your own standings (Bradley-Terry ratings with 95% intervals), which you can download as JSON lines."""

from __future__ import annotations

import string
from typing import Any

import gradio as gr
import pandas as pd

from ..arena import BASE, MAX_CONTENDERS
from .common import Api, Caller, page_errors, scoped, user_errors

STANDINGS_COLUMNS = ["name", "rating", "95% interval", "wins", "losses", "ties", "win_rate", "votes"]
LETTERS = string.ascii_uppercase[:MAX_CONTENDERS]
NEEDS_VOTES = "needs more votes"


def interval_text(row: dict[str, Any]) -> str:
    """A contender's 95% interval as the table shows it; none yet (arena.MIN_INTERVAL_VOTES) says so."""
    low, high = row.get("ci_low"), row.get("ci_high")
    return NEEDS_VOTES if low is None or high is None else f"{low:g} – {high:g}"


def standings_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([{k: interval_text(r) if k == "95% interval" else r.get(k) for k in STANDINGS_COLUMNS}
                         for r in rows], columns=STANDINGS_COLUMNS)


def tally_markdown(votes: int) -> str:
    return f"Your votes so far: **{votes}**" if votes else "No votes yet."


class ArenaEndpoints:
    """The arena's endpoints: each acts for the caller (``me``: common.Caller, as ``common.scoped`` hands it)."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def arena_battle(self, me: Caller, contenders: str, prompt: str, base_model: str = "", temperature: float = 0.0,
                     max_new_tokens: int = 256, top_p: float = 0.9, repetition_penalty: float = 1.0,
                     seed: int = 0) -> dict[str, Any]:
        """Two to four contenders (comma-separated: `base`, your run ids, `ID@step` checkpoints) answer the prompt
        with the same seed and settings; returns {battle_id, answers: {A: ..., B: ...}} in a hidden order."""
        names = [c.strip() for c in (contenders or "").split(",") if c.strip()]
        return me.space.arena_battle(names, prompt, base_model=base_model, temperature=float(temperature),
                                     max_new_tokens=int(max_new_tokens), top_p=float(top_p),
                                     repetition_penalty=float(repetition_penalty), seed=int(seed))

    def arena_vote(self, me: Caller, battle_id: str, verdict: str) -> dict[str, Any]:
        """Vote on one of your battles: a letter (that answer is better), "tie" or "both_bad". Returns the vote with
        the contenders revealed and your updated standings."""
        return me.space.arena_vote(battle_id, verdict)

    def arena_standings(self, me: Caller) -> list[dict[str, Any]]:
        """Your standings: per contender a Bradley-Terry rating (Elo scale) with its 95% bootstrap interval, wins,
        losses, ties and win rate, best first. Only your own votes count."""
        return me.space.arena_standings()

    def arena_export(self, me: Caller) -> str:
        """Your votes as a JSON-lines file (prompt, settings, contenders in the order shown, answers, verdict)."""
        return str(me.space.arena_export(self.api.downloads / "arena"))

    def load(self, me: Caller) -> tuple[str, pd.DataFrame]:
        return tally_markdown(me.space.arena_votes()), standings_frame(me.space.arena_standings())


def show_battle(b: dict[str, Any]) -> list[Any]:
    answers = b.get("answers") or {}
    out: list[Any] = [b.get("battle_id", "")]
    out += [gr.Textbox(value=answers.get(x, ""), visible=x in answers) for x in LETTERS]
    out += [gr.Button(visible=x in answers) for x in LETTERS]
    return out + ["Which answer is better? The contenders are revealed after your vote."]


def show_vote(r: dict[str, Any]) -> tuple[str, str, str, pd.DataFrame]:
    v = r["vote"]
    who = ", ".join(f"{x} = **{n}**" for x, n in zip(LETTERS, v["contenders"]))
    said = {"tie": "a tie", "both_bad": "all bad"}.get(v["verdict"], f"{v['verdict']} is better")
    # the battle stays open on the page: a second vote on it is told it was voted on already
    return (v.get("battle_id", ""), f"You voted {said}: {who}.", tally_markdown(r["votes"]),
            standings_frame(r["standings"]))


def create_arena_panel(api: Api, base_model: gr.Textbox, temperature: gr.Slider, max_new: gr.Slider,
                       top_p: gr.Slider, rep: gr.Slider, seed: gr.Number) -> None:
    gr.Markdown("### Blind A/B arena")
    with gr.Row():
        contenders = gr.Textbox(value="", label="Contenders (2 to 4, comma-separated)", scale=2,
                                placeholder=f"{BASE}, RUN_ID, RUN_ID@40", elem_id="arena-contenders",
                                info=f"'{BASE}' (the base model), your runs and their checkpoints (ID@step)")
        aprompt = gr.Textbox(value="", label="Prompt", scale=3, elem_id="arena-prompt")
        battle_btn = gr.Button("Battle", variant="primary", scale=0, elem_id="arena-battle")
    battle_id = gr.Textbox(visible=False, value="", elem_id="arena-battle-id")
    with gr.Row():
        boxes = [gr.Textbox(label=f"Answer {x}", lines=5, interactive=False, visible=i < 2, elem_id=f"arena-answer-{x}")
                 for i, x in enumerate(LETTERS)]
    with gr.Row():
        better = [gr.Button(f"{x} is better", visible=i < 2, elem_id=f"arena-vote-{x}") for i, x in enumerate(LETTERS)]
        tie_btn = gr.Button("Tie", elem_id="arena-vote-tie")
        bad_btn = gr.Button("All bad", elem_id="arena-vote-both_bad")
    reveal = gr.Markdown(elem_id="arena-reveal")
    tally = gr.Markdown("No votes yet.", elem_id="arena-tally")
    table = gr.Dataframe(standings_frame([]), interactive=False, elem_id="arena-standings")
    with gr.Row():
        export_btn = gr.Button("⬇ Export votes (JSONL)", elem_id="arena-export")
        export_file = gr.File(label="Votes", interactive=False)
    result = gr.JSON(visible=False)

    ep, mine = ArenaEndpoints(api), scoped(api)
    arena_battle, arena_vote = user_errors(mine(ep.arena_battle)), user_errors(mine(ep.arena_vote))
    arena_standings, arena_export = user_errors(mine(ep.arena_standings)), user_errors(mine(ep.arena_export))
    load = page_errors(mine(ep.load))
    settings = [base_model, temperature, max_new, top_p, rep, seed]
    battle_btn.click(arena_battle, [contenders, aprompt, *settings], result, api_name="arena_battle",
                     concurrency_limit=2).success(page_errors(show_battle), result,
                                                  [battle_id, *boxes, *better, reveal], api_visibility="private")
    verdict_box = gr.Textbox(visible=False)  # the API's vote first: it takes the endpoint name /arena_vote
    gr.Button(visible=False).click(arena_vote, [battle_id, verdict_box], result, api_name="arena_vote")
    for verdict, button in [*zip(LETTERS, better), ("tie", tie_btn), ("both_bad", bad_btn)]:
        button.click(arena_vote, [battle_id, gr.Textbox(value=verdict, visible=False)], result,
                     api_visibility="private").success(page_errors(show_vote), result,
                                                       [battle_id, reveal, tally, table], api_visibility="private")
    gr.Button(visible=False).click(arena_standings, None, result, api_name="arena_standings")
    export_btn.click(arena_export, None, export_file, api_name="arena_export")
    aprompt.submit(load, None, [tally, table], api_visibility="private")
    contenders.focus(load, None, [tally, table], api_visibility="private")
