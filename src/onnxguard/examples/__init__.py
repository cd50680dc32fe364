"""Built-in example models, trained in seconds on data sets that ship with scikit-learn."""
