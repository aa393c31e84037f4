"""Training: ``trainer`` (the loop), ``optim`` (Muon, AdamW groups), ``evaluation``,
``sizing`` (a model for a time budget), ``metrics_sinks``, ``plot``, ``cpu_threads``."""
