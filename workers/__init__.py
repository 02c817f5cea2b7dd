"""Code that runs inside Ray actors and Tune trials: teacher, cache, search, retrain, losses."""
