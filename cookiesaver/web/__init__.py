"""The HTTP side: the server with its limits and the resource tree, one module per area."""
