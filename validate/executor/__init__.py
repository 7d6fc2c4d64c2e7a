"""A small torch executor for OPT- and Llama-family decoder stacks under an offloading Policy."""
