"""finetune: fine-tune open LLMs with QLoRA on your data, and share the adapters on the Hub."""

import logging


class _NoKernelsNotice(logging.Filter):
    """bitsandbytes warns at import, on every CPU machine without the `kernels` package ("No module named
    'kernels'"), that its optional Hub kernel is missing; it then uses its own CPU code, and `kernels` is not to be
    installed (it downloads code from the Hub). The line only alarms users: it is left out."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoKernelsNotice())
