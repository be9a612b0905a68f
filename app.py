"""finetune: fine-tune an open LLM on your data with QLoRA, in the browser.

`python app.py` serves on 127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are respected).
Importing this module builds nothing and downloads nothing.
"""

import os

try:  # on a ZeroGPU Space `spaces` must be imported before anything touches CUDA
    import spaces  # noqa: F401
except ImportError:
    pass


def build_app(workspace=None):
    from finetune.ui import build_app as build

    return build(workspace)


if __name__ == "__main__":
    from finetune.data import max_upload_bytes
    from finetune.hub import withhold_server_token
    from finetune.service import default_workspace
    from finetune.ui import CSS, launch_options

    workspace = default_workspace()
    if workspace.multi_user:  # a public Space: the owner's HF_TOKEN reads nothing a visitor names
        withhold_server_token()
    build_app(workspace).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        css=CSS,
        # Gradio refuses a larger upload before storing it (FINETUNE_MAX_UPLOAD_MB, default 200)
        max_file_size=max_upload_bytes(),
        # the owner cookie that keeps anonymous visitors apart; the endpoints as MCP tools for agents
        **launch_options(workspace, mcp=True),
    )
