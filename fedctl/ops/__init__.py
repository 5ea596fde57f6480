"""Lifecycle operations (provision, start, stop, status, teardown, collect): each a short sequence of
library calls that returns a typed report. The CLI prints the reports; nothing here prints."""
