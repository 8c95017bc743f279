"""training: models behind one interface, evaluation, MLflow tracking, tuning. Knows models, never HTTP."""
