"""llama.cpp (the xllamacpp binary wheel: llama.cpp's server, in process) as the real consumer of exported GGUF
files: its tokenizer, its Jinja chat template engine, its next-token log-probabilities and greedy answers."""

from __future__ import annotations

import json
import urllib.request
from typing import Any


class LlamaCpp:
    def __init__(self, model: str, lora: str | None = None, n_ctx: int = 512):
        import xllamacpp

        p = xllamacpp.CommonParams()
        p.model.path = str(model)
        p.use_jinja = True
        p.n_ctx = n_ctx
        p.warmup = False
        p.cpuparams.n_threads = 2
        p.cpuparams_batch.n_threads = 2
        if lora:
            info = xllamacpp.CommonAdapterLoraInfo(str(lora), 1.0)
            p.lora_adapters = [info]
        self.server = xllamacpp.Server(p)
        self.url = self.server.listening_address

    def _post(self, route: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(self.url + route, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())

    def apply_template(self, messages: list[dict[str, str]]) -> str:
        """The prompt llama.cpp renders from the file's ``tokenizer.chat_template`` (with the generation prompt)."""
        prompt: str = self._post("/apply-template", {"messages": messages})["prompt"]
        return prompt

    def tokenize(self, text: str) -> list[int]:
        tokens: list[int] = self._post("/tokenize", {"content": text, "add_special": False, "parse_special": True})["tokens"]
        return tokens

    def next_logprobs(self, prompt: str, n: int = 5) -> dict[int, float]:
        """The top ``n`` next tokens after ``prompt`` (as raw text) with their log-probabilities."""
        r = self.server.handle_completions({"prompt": prompt, "n_predict": 1, "temperature": 0, "n_probs": n,
                                            "post_sampling_probs": False})
        top = r["choices"][0]["logprobs"]["content"][0]["top_logprobs"] if "choices" in r else \
            r["completion_probabilities"][0]["top_logprobs"]
        return {int(t["id"]): float(t["logprob"]) for t in top}

    def complete(self, prompt: str, max_tokens: int = 32, stop: list[str] | None = None) -> str:
        r = self.server.handle_completions({"prompt": prompt, "n_predict": max_tokens, "temperature": 0,
                                            "top_k": 1, "stop": stop or []})
        text: str = r["choices"][0]["text"] if "choices" in r else r["content"]
        return text

    def chat(self, messages: list[dict[str, str]], max_tokens: int = 32, stop: list[str] | None = None) -> str:
        body: dict[str, Any] = {"messages": messages, "temperature": 0, "top_k": 1, "max_tokens": max_tokens}
        if stop:
            body["stop"] = stop
        r = self.server.handle_chat_completions(body)
        text: str = r["choices"][0]["message"]["content"]
        return text

    def close(self) -> None:
        del self.server

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
