"""``fedctl sweep``: a paper's campaign of runs (a grid of ``--set`` values x seeds) on one fleet.

Modules: ``records`` (the typed run record shared by the campaign and its tables), the campaign
itself (sweep file, state, scheduler) and the paper's tables, curves and tracker logs.
"""
