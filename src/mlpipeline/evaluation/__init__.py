"""Pure pieces of the evaluate stage: metrics, the scikit-learn baseline, and the report files."""
