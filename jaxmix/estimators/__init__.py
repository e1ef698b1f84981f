"""scikit-learn-style estimators built on the engine."""
