"""The study and its record: the validated study (spec), results decisions, the experiment folder and its
trial checkpoints."""
