"""Shared foundations every stage uses: params, dataset IO, atomic writes, seeding, stage runner."""
