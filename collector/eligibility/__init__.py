"""Screening eligibility: staff facts, their append-only store, and the decision engine.

Import what you need from its modules: ``facts``, ``engine``, ``store``, ``service``.  The
package itself imports nothing, so the CLI does not load the engine until a command runs it.
"""
