"""swarmnode's benchmark workload as a Flower App (scripts/bench_vs_flower.py)."""
