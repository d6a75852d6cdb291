"""Training runtime shared by train, train_teacher, evaluate and predict: datasets, the engine, checkpoints, bundles, metrics and plots."""
