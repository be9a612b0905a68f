"""Export: the adapter merged into plain weights, as GGUF (llama.cpp, LM Studio), as an Ollama model, or as a
demo Space. ``export_model`` is the one entry point (CLI, app, endpoint); the modules hold one format each."""

from .exporter import FORMATS, ExportResult, default_out, export_model, quants_for
from .gguf_file import DEFAULT_QUANT, QUANTS, ExportError
from .merge import DTYPES, MERGED_CARD, merge_adapter, push_merged

__all__ = ["DEFAULT_QUANT", "DTYPES", "FORMATS", "MERGED_CARD", "QUANTS", "ExportError", "ExportResult", "default_out",
           "export_model", "merge_adapter", "push_merged", "quants_for"]
