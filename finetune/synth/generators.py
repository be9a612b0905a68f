"""The models that write and judge a recipe's rows, behind one small interface: a batch of conversations in, one
answer each out.

- **In this process** (``embedded``, a local folder or a Hub id): ``inference.generate_batch``, the same loading,
  template and generation as the Playground and ``finetune generate``.
- **An OpenAI-compatible server** (llama.cpp, vLLM, Ollama, TGI) by base URL: a plain ``POST {url}/chat/completions``
  through httpx. Not huggingface_hub's InferenceClient here: given a URL and no key, it sends the machine's own
  Hugging Face token to that URL (its HF-Inference helper falls back to ``get_token()``); this client sends only
  the key the recipe names (``api_key_env``), to the URL the recipe names.
- **Hugging Face Inference Providers** (``provider:MODEL_ID``): huggingface_hub's InferenceClient with the signed-in
  user's own token, routed by the Hub to a provider that serves the model (billed to that user).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from ..errors import UserError
from ..templates import Message

PROVIDER_PREFIX = "provider:"
EMBEDDED = "embedded"
TIMEOUT_S = 300.0  # a slow server's answer of a few hundred tokens on a CPU
RATINGS = ("1", "2", "3", "4", "5")
MIN_RATING_MASS = 0.05  # below this share of the first token's probability on a digit, the judge gave no rating
TOP_LOGPROBS = 10  # alternatives asked of a server for the first token of a rating


class GeneratorError(UserError):
    """A generator that cannot be reached or refuses the request; the message names it and the fix."""


class Generator(Protocol):
    """Answers a batch of conversations (one answer each)."""

    @property
    def name(self) -> str: ...  # what the dataset card records: no key, no token

    def chat(self, conversations: Sequence[Sequence[Message]], *, max_new_tokens: int, temperature: float,
             seed: int) -> list[str]: ...

    def rate(self, conversations: Sequence[Sequence[Message]]) -> list[float | None]: ...


_SCORE = re.compile(r"(?<![\d.])([1-5])(?:\.\d+)?(?![\d])")


def parse_score(reply: str) -> float | None:
    """The first score from 1 to 5 in the judge's reply; None when it gave none."""
    m = _SCORE.search(reply or "")
    return float(m.group(1)) if m else None


def expected_rating(probs: dict[str, float]) -> float | None:
    """The rating a judge gives, 1 to 5, as the mean of its first token's probabilities over the digits (G-Eval's
    probability-weighted score: finer than the one digit it would write, and a small model's hesitation shows);
    None when the digits hold almost none of the probability (it did not rate).

    >>> expected_rating({"4": 0.6, "5": 0.2, "3": 0.2}), expected_rating({"4": 0.01})
    (4.0, None)
    """
    mass = sum(probs.get(r, 0.0) for r in RATINGS)
    if mass < MIN_RATING_MASS:
        return None
    return round(sum(int(r) * probs.get(r, 0.0) for r in RATINGS) / mass, 2)


def _top_probs(top: Any) -> dict[str, float]:
    """An OpenAI-style ``top_logprobs`` list of the first token as {token text: probability}."""
    import math

    out: dict[str, float] = {}
    for t in top or []:
        get = t.get if isinstance(t, dict) else (lambda k, t=t: getattr(t, k, None))
        text, logprob = str(get("token") or "").strip(), get("logprob")
        if text in RATINGS and isinstance(logprob, (int, float)):
            out[text] = out.get(text, 0.0) + math.exp(logprob)
    return out


def kind_of(model: str) -> str:
    """``embedded`` | ``url`` | ``provider`` | ``local`` (a folder or Hub id loaded in this process).

    >>> [kind_of(m) for m in ("", "embedded", "http://127.0.0.1:8080/v1", "provider:org/m", "org/m")]
    ['embedded', 'embedded', 'url', 'provider', 'local']
    """
    text = (model or "").strip()
    if text in ("", EMBEDDED):
        return "embedded"
    if text.lower().startswith(("http://", "https://")):
        return "url"
    if text.startswith(PROVIDER_PREFIX):
        return "provider"
    return "local"


@dataclass
class InProcess:
    """A model loaded in this process (cached by ``inference.load``): the embedded SmolLM2 when ``model`` is empty."""

    model: str = ""
    batch_size: int = 8

    @property
    def name(self) -> str:
        return self.model or "embedded SmolLM2-135M-Instruct (in process)"

    def chat(self, conversations: Sequence[Sequence[Message]], *, max_new_tokens: int, temperature: float,
             seed: int) -> list[str]:
        from ..inference import generate_batch

        return generate_batch(list(conversations), model=self.model, max_new_tokens=max_new_tokens,
                              temperature=temperature, seed=seed, batch_size=self.batch_size)

    def rate(self, conversations: Sequence[Sequence[Message]]) -> list[float | None]:
        from ..inference import choice_probabilities

        rows = choice_probabilities(list(conversations), RATINGS, model=self.model, batch_size=self.batch_size)
        return [expected_rating(dict(zip(RATINGS, row))) for row in rows]


@dataclass
class OpenAICompatible:
    """An OpenAI-compatible chat completions server at ``base_url`` (e.g. ``http://127.0.0.1:8080/v1``)."""

    base_url: str
    model: str = ""
    api_key: str = ""

    @property
    def name(self) -> str:
        return f"{self.base_url}" + (f" ({self.model})" if self.model else "")

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        url = self.base_url.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            r = httpx.post(url, json=body, headers=headers, timeout=TIMEOUT_S)
        except httpx.HTTPError as e:
            raise GeneratorError(f"cannot reach the generator at {self.base_url} ({e.__class__.__name__}); start the "
                                 "server, or check the URL (an OpenAI-compatible base URL ends in /v1)") from None
        if r.status_code in (401, 403):
            raise GeneratorError(f"the server at {self.base_url} refused the request ({r.status_code}); set the "
                                 "API key's environment variable named in generator.api_key_env")
        if r.status_code >= 400:
            raise GeneratorError(f"the server at {self.base_url} answered {r.status_code} ({r.text[:200]}); check "
                                 "the model name (generator.server_model) and that it serves chat completions")
        try:
            choice: dict[str, Any] = r.json()["choices"][0]
            choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise GeneratorError(f"the server at {self.base_url} did not answer as an OpenAI-compatible chat "
                                 f"completions server ({r.text[:120]!r}); check the base URL") from None
        return choice

    def _body(self, conv: Sequence[Message], **kw: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": [dict(m) for m in conv], **kw}
        if self.model:
            body["model"] = self.model
        return body

    def chat(self, conversations: Sequence[Sequence[Message]], *, max_new_tokens: int, temperature: float,
             seed: int) -> list[str]:
        return [str(self._post(self._body(conv, max_tokens=max_new_tokens, temperature=temperature,
                                          seed=seed + i))["message"]["content"] or "").strip()
                for i, conv in enumerate(conversations)]

    def rate(self, conversations: Sequence[Sequence[Message]]) -> list[float | None]:
        """The rating from the first token's log-probabilities (``logprobs``/``top_logprobs``); a server that gives
        none is read from its reply's text."""
        out = []
        for conv in conversations:
            choice = self._post(self._body(conv, max_tokens=4, temperature=0, logprobs=True,
                                           top_logprobs=TOP_LOGPROBS))
            content = (choice.get("logprobs") or {}).get("content") or []
            probs = _top_probs(content[0].get("top_logprobs") if content else None)
            out.append(expected_rating(probs) if probs else parse_score(str(choice["message"]["content"] or "")))
        return out


@dataclass
class Providers:
    """Hugging Face Inference Providers: ``model`` served by a provider the Hub picks, billed to ``token``'s user."""

    model: str
    token: str

    @property
    def name(self) -> str:
        return f"{PROVIDER_PREFIX}{self.model} (Hugging Face Inference Providers)"

    def chat(self, conversations: Sequence[Sequence[Message]], *, max_new_tokens: int, temperature: float,
             seed: int) -> list[str]:
        out = []
        for i, conv in enumerate(conversations):
            r = self._call(conv, max_tokens=max_new_tokens, temperature=temperature, seed=seed + i)
            out.append(str(r.choices[0].message.content or "").strip())
        return out

    def _call(self, conv: Sequence[Message], **kw: Any) -> Any:
        from huggingface_hub import InferenceClient
        from huggingface_hub.errors import HfHubHTTPError

        client = InferenceClient(provider="auto", api_key=self.token, timeout=TIMEOUT_S)
        try:
            return client.chat_completion([dict(m) for m in conv], model=self.model, **kw)
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else "no answer"
            raise GeneratorError(f"Inference Providers refused {self.model} ({status}); check the model id, that "
                                 "a provider serves it, and your account's credits") from None
        except (OSError, ValueError) as e:
            raise GeneratorError(f"Inference Providers could not run {self.model} ({str(e)[:160]}); check the "
                                 "model id and that you are online") from None

    def rate(self, conversations: Sequence[Sequence[Message]]) -> list[float | None]:
        out = []
        for conv in conversations:
            reply = self._call(conv, max_tokens=4, temperature=0, logprobs=True, top_logprobs=TOP_LOGPROBS)
            choice = reply.choices[0]
            content = getattr(choice.logprobs, "content", None) or []
            probs = _top_probs(content[0].top_logprobs if content else None)
            out.append(expected_rating(probs) if probs else parse_score(str(choice.message.content or "")))
        return out


def make_generator(model: str, *, server_model: str = "", api_key_env: str = "", token: str | None = None) -> Generator:
    """The generator a recipe's ``model`` names. ``token``: the signed-in user's Hugging Face token (Inference
    Providers only; never sent anywhere else)."""
    kind = kind_of(model)
    text = model.strip()
    if kind == "embedded":
        return InProcess("")
    if kind == "local":
        return InProcess(text)
    if kind == "url":
        key = ""
        if api_key_env:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise GeneratorError(f"api_key_env: the environment variable {api_key_env} is not set; export the "
                                     "server's key in it, or leave api_key_env empty for a server without a key")
        return OpenAICompatible(text, server_model, key)
    model_id = text[len(PROVIDER_PREFIX):].strip()
    if not model_id:
        raise GeneratorError("provider: name the model after it, e.g. provider:meta-llama/Llama-3.1-8B-Instruct")
    if not token:
        raise GeneratorError("Inference Providers run with your own Hugging Face token: sign in (or set HF_TOKEN / "
                             "run `hf auth login` on your machine)")
    return Providers(model_id, token)
