# Hand-written (see stubs/README.md): only the submodule criu-ext imports from.
