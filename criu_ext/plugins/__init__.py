"""Built-in plugins: gtp, netfilter, and trace (off unless selected)."""
