"""Optimizers and learning-rate schedules as registry components (``optimizer``, ``lr_scheduler``)."""
