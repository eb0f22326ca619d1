"""The main job: mobile-core functions (SPGW, HSS, MME) migrated between two hosts, measured.

Run with ``scripts/migrate``; it boots the VM and runs ``python -m scenario run``
inside it, then renders the report on the host.
"""
