"""Model work away from the robot: teacher labelling for distillation (and, with it, the
data sets, metrics, evaluation and training the student goes through)."""
