"""Live migration between two hosts: ``criu-ext migrate`` (source), ``criu-ext receive``
(destination).

Modules: ``tls`` (certificates, TLS contexts), ``wire`` (the control channel's
messages), ``policy`` (when pre-copy stops), ``pagesrv`` (CRIU's page server and
pre-dump through RPC), ``source``, ``destination``, ``report`` (progress, JSON).
docs/migrate.md has the design.
"""
