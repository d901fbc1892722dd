"""The trace layer: the session (traces, store, books, cleanup), probes, event records, LBR."""
