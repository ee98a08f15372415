"""TRL 0.7.10 usage patterns written as standalone scripts (our own wording), run by ``tests/api/test_trl_scripts.py``.

Each ``*.py`` here follows one TRL 0.7.10 example script or documentation snippet. The only
differences from the TRL original are ``trl`` -> ``rlft`` in the imports, local paths of tiny
offline models and datasets instead of hub names, and smaller sizes. ``assets.py`` builds those
local stand-ins; ``runner.py`` runs a script and reports what the test checks.
"""
