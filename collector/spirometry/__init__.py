"""Spirometry science: GLI reference equations and ATS/ERS 2019 manoeuvre quality (pure code, no I/O).

Import what you need from its modules: ``gli`` (reference equations), ``quality`` (ATS/ERS
manoeuvre quality), ``equations`` and ``codes`` (names only).  The package itself imports
nothing, so a module that needs only names (the CLI, the config schema) does not load numpy.
"""
