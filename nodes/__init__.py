"""ComfyUI adapters: each module exports NODES, the node classes it defines."""
