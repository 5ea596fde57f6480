"""Lifecycle operations (provision, start, stop, status, teardown, collect): each a short sequence of
library calls that returns a typed report. The CLI prints the reports; nothing here prints.

``fedctl.ops.run.run_experiment(store, inputs, ui)`` runs a whole experiment (provision, start,
follow, ``on_finish``) behind the small ``RunUI`` protocol; ``fedctl.ops.common.load_inputs`` makes
its inputs and ``fedctl.ops.common.session`` binds the one set of connections a command shares to
the StateStore every operation is given."""
